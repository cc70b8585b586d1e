"""The one thread that owns the engine. The engine is not thread-safe and holds one adapter, so
requests are served one at a time, in order, from a bounded queue; the HTTP layer only checks,
enqueues and waits.

Every request ends with the engine back at its initial state (`engine.reset()` in a `finally`:
the adapter's initial values with LoRA, the initial weights without), whether it was answered,
refused, cancelled or failed. A request with a `user` under --max_sessions first loads that
session's adapter and, once answered, keeps the adapted one for the session's next request.
"""
from __future__ import annotations

import asyncio
import copy
import queue
import sys
import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field

from sttrl.modes.common import Timer
from sttrl.serve.answer import Cancelled, Watched, run_job
from sttrl.serve.metrics import Metrics
from sttrl.serve.schema import BadRequest, Job
from sttrl.settings import RunParts

# The prompt whose samples the tests compare (--test_probe)
PROBE_PROMPT = "What is 2 + 3?"


@dataclass
class Ticket:
    """A job on its way through the queue, and where its result goes."""

    job: Job | None
    """None: the test probe."""
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued: float = field(default_factory=time.perf_counter)

    def resolve(self, result) -> None:
        """Hand the (outcome or exception) to the waiting request, from the worker thread."""
        def put():
            if not self.future.done():
                self.future.set_result(result)
        self.loop.call_soon_threadsafe(put)


class Worker:
    def __init__(self, engine, parts: RunParts, max_queue: int, max_sessions: int,
                 metrics: Metrics):
        self.engine, self.parts, self.metrics = engine, parts, metrics
        self.queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self.max_sessions = max_sessions
        self.sessions: OrderedDict[str, dict] = OrderedDict()  # least recently used first
        self.running = 0
        self.thread = threading.Thread(target=self.loop, name="sttrl-engine", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Finish the request in hand, then end (waiting requests get no answer)."""
        while True:
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        self.queue.put(None)
        self.thread.join(timeout=60)

    def submit(self, ticket: Ticket) -> None:
        """Queue the ticket; queue.Full when --max_queue requests already wait."""
        self.queue.put_nowait(ticket)

    def alive(self) -> bool:
        return self.thread.is_alive()

    def loop(self) -> None:
        while True:
            ticket = self.queue.get()
            if ticket is None:
                return
            self.running = 1
            try:
                ticket.resolve(self.probe() if ticket.job is None else self.serve(ticket))
            except BaseException as err:  # noqa: BLE001 - the thread must outlive any request
                ticket.resolve(err)
            finally:
                self.running = 0

    def serve(self, ticket: Ticket):
        """One request: its outcome and seconds, or the exception it ended with."""
        job, timer = ticket.job, Timer()
        timer.add("queue", time.perf_counter() - ticket.enqueued)
        if ticket.cancelled.is_set():
            self.metrics.count("cancelled")
            return Cancelled()
        session = job.user if self.max_sessions and job.user else None
        try:
            if session in self.sessions:
                self.sessions.move_to_end(session)
                self.engine.load_state_dict(self.sessions[session])
            outcome = run_job(Watched(self.engine, ticket.cancelled), job, self.parts, timer)
            if session:
                # copied: the engine's tensors are overwritten by the reset below
                self.sessions[session] = copy.deepcopy(self.engine.state_dict())
                self.sessions.move_to_end(session)
                while len(self.sessions) > self.max_sessions:
                    self.sessions.popitem(last=False)  # the least recently used session ends
        except Cancelled as err:
            self.metrics.count("cancelled")
            return err
        except BadRequest as err:
            self.metrics.count("bad_request")
            return err
        except Exception as err:  # noqa: BLE001 - a 500 for this request, the server goes on
            self.metrics.count("error")
            traceback.print_exc(file=sys.stderr)
            return err
        finally:
            with timer("reset"):
                self.engine.reset()
        timer.seconds["total"] = sum(timer.seconds.values())
        outcome.facts["seconds"] = {k: round(v, 4) for k, v in timer.seconds.items()}
        outcome.facts["session"] = session
        self.metrics.finished(dict(timer.seconds), outcome.facts["steps"],
                              outcome.facts["skipped"])
        return outcome

    def probe(self) -> dict:
        """Samples of a fixed prompt with a fixed seed, and their log-probs, from the engine as
        the next request finds it (--test_probe only: the tests' check that no request leaves
        the model changed; only the engine contract's `generate`, so both engines have it)."""
        samples = self.engine.generate(PROBE_PROMPT, 2, 1.0, 1.0, 8, 0)
        return {"tokens": [s.token_ids for s in samples],
                "logprobs": [s.logprobs for s in samples]}
