"""The server's counters, as `GET /metrics` writes them in Prometheus' text format.

Written by hand (a dozen lines) rather than through prometheus_client: the core install stays
small, and every number here is updated under one lock by the worker and the HTTP layer.
"""
from __future__ import annotations

import threading
from collections import defaultdict

OUTCOMES = ("ok", "bad_request", "rejected", "cancelled", "error")


class Metrics:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = dict.fromkeys(OUTCOMES, 0)
        self.phase_seconds: dict[str, float] = defaultdict(float)
        self.phase_count: dict[str, int] = defaultdict(int)
        self.updates_skipped = 0
        self.steps = 0
        self.request_seconds = 0.0

    def count(self, outcome: str) -> None:
        with self.lock:
            self.requests[outcome] += 1

    def finished(self, seconds: dict, steps: int, skipped: bool) -> None:
        """A served request: its seconds per phase, optimiser steps, and whether it updated."""
        with self.lock:
            self.requests["ok"] += 1
            for phase, s in seconds.items():
                self.phase_seconds[phase] += s
                self.phase_count[phase] += 1
            self.request_seconds += seconds.get("total", 0.0)
            self.steps += steps
            self.updates_skipped += bool(skipped)

    def mean_request_seconds(self) -> float:
        with self.lock:
            return self.request_seconds / self.requests["ok"] if self.requests["ok"] else 0.0

    def render(self, queue_length: int, running: int, sessions: int) -> str:
        with self.lock:
            out = []

            def metric(name, kind, text, rows):
                out.extend([f"# HELP {name} {text}", f"# TYPE {name} {kind}"])
                out.extend(f"{name}{labels} {value}" for labels, value in rows)

            metric("sttrl_requests_total", "counter", "Requests by outcome.",
                   [(f'{{outcome="{k}"}}', v) for k, v in self.requests.items()])
            metric("sttrl_queue_length", "gauge", "Requests waiting for the engine.",
                   [("", queue_length)])
            metric("sttrl_running", "gauge", "Requests the engine is working on.",
                   [("", running)])
            metric("sttrl_sessions", "gauge", "Live sessions (adapters kept per user).",
                   [("", sessions)])
            metric("sttrl_phase_seconds", "summary", "Seconds spent per phase of served "
                   "requests (queue, generate, vote, train, answer, reset, total).",
                   [(f'_sum{{phase="{p}"}}', round(s, 6)) for p, s in self.phase_seconds.items()]
                   + [(f'_count{{phase="{p}"}}', self.phase_count[p])
                      for p in self.phase_seconds])
            metric("sttrl_updates_skipped_total", "counter", "Served requests whose update "
                   "was skipped (weak or unanimous vote, no answer, steps 0).",
                   [("", self.updates_skipped)])
            metric("sttrl_steps_total", "counter", "Optimiser steps taken.", [("", self.steps)])
            return "\n".join(out) + "\n"
