"""`sttrl serve [run flags] [--host] [--port] [--api_key] [--max_queue] [--max_sessions]`: the
run's flags become the server's defaults and limits, the engine is built once, and uvicorn
serves the app (sttrl/serve/app.py) on a socket bound here, so a port in use or a host that
would expose the server without a key is one line and exit 2, before the model loads.
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from pathlib import Path

from sttrl.config import Config, resolve, validate
from sttrl.errors import UserError
from sttrl.parts import parts
from sttrl.run import build_engine, check_device, on_gpu
from sttrl.serve.schema import Limits

# Each request adapts a LoRA adapter of its own unless --lora_rank 0 asks for full weights:
# an adapter's reset copies a few MB instead of every weight, and sessions keep only it.
SERVE_LORA_RANK = 8
SERVE_FLAGS = {  # name: (default, type, help)
    "host": ("127.0.0.1", str, "address to bind; anything but loopback needs --api_key"),
    "port": (8000, int, "port to bind (0: a free one, printed at start)"),
    "api_key": (None, str, "clients must send Authorization: Bearer KEY (or set "
                           "STTRL_API_KEY)"),
    "max_queue": (16, int, "requests that may wait for the engine; more get 429"),
    "max_sessions": (0, int, "a request's `user` keeps its adapter across its requests, for "
                             "this many users (least recently used dropped; 0: off)"),
}
REFUSED = {"mode": "dataset", "continuous": True}
SERVE_METHODS = ("ttrl", "ttft", "slot")  # memo rephrases a bare question; serve gets chats


def add_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    for name, (default, kind, text) in SERVE_FLAGS.items():
        parser.add_argument(f"--{name}", type=kind, default=argparse.SUPPRESS,
                            help=f"serve: {text} (default: {default})")
    # tests only: GET /test/probe returns a fixed response's log-probs under the engine
    parser.add_argument("--test_probe", action="store_true", default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS)
    return parser


def split_args(args: dict) -> tuple[dict, dict]:
    """(the run's option values, the server's) from the parsed flags."""
    opts = {name: args.pop(name, default) for name, (default, _, _) in SERVE_FLAGS.items()}
    opts["test_probe"] = args.pop("test_probe", False)
    opts["api_key"] = opts["api_key"] or os.environ.get("STTRL_API_KEY") or None
    return args, opts


def loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_options(cfg: Config, opts: dict) -> None:
    if not loopback(opts["host"]) and not opts["api_key"]:
        raise UserError(f"--host {opts['host']} would serve beyond this machine with no key; "
                        "pass --api_key KEY (or set STTRL_API_KEY), or bind 127.0.0.1")
    if not 0 <= opts["port"] <= 65535:
        raise UserError(f"--port must be 0 to 65535, got {opts['port']}")
    if opts["max_queue"] < 1:
        raise UserError(f"--max_queue must be at least 1, got {opts['max_queue']}")
    if opts["max_sessions"] < 0:
        raise UserError(f"--max_sessions must be 0 or more, got {opts['max_sessions']}")
    if opts["max_sessions"] and not cfg.lora_rank:
        raise UserError("--max_sessions keeps a LoRA adapter per user; it needs --lora_rank > 0")
    for name, value in REFUSED.items():
        if getattr(cfg, name) == value:
            raise UserError(f"sttrl serve adapts per request; --{name} {value} is for runs "
                            "(--max_sessions keeps a user's adapter across requests)")
    if cfg.adaptation_method not in SERVE_METHODS:
        raise UserError(f"sttrl serve: --adaptation_method {cfg.adaptation_method} is not "
                        f"served (one of {', '.join(SERVE_METHODS)}): it rephrases a bare "
                        "question, and a server gets chat messages")
    if cfg.reward == "oracle":
        raise UserError("sttrl serve has no reference answers: --reward oracle is for runs")


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    return sock


def served_name(model: str) -> str:
    """The id clients name: the model's name, never the path it was loaded from."""
    return Path(model.rstrip("/")).name or model


def serve(values: dict, opts: dict) -> int:
    """Build the engine and serve until interrupted; returns the exit code."""
    import uvicorn

    from sttrl.serve.app import Served, make_app
    from sttrl.serve.metrics import Metrics
    from sttrl.serve.worker import Worker

    values.setdefault("lora_rank", SERVE_LORA_RANK)
    cfg = validate(Config(**values))
    check_options(cfg, opts)
    cfg = resolve(cfg, on_gpu(cfg))
    check_device(cfg)
    sock = bind(opts["host"], opts["port"])
    run_parts = parts(cfg)
    engine = build_engine(cfg.engine, run_parts.engine, cfg.model)
    try:
        limits = Limits(n_votes=cfg.n_votes, n_train=cfg.n_train, n_eval=cfg.n_eval,
                        steps=cfg.steps_per_question, max_new_tokens=cfg.max_new_tokens,
                        min_majority_ratio=cfg.min_majority_ratio)
        served = Served(name=served_name(cfg.model), limits=limits, api_key=opts["api_key"],
                        max_context=engine.max_context,
                        adapter=f"lora{cfg.lora_rank}" if cfg.lora_rank else "full",
                        test_probe=opts["test_probe"])
        metrics = Metrics()
        worker = Worker(engine, run_parts, opts["max_queue"], opts["max_sessions"], metrics)
        host, port = sock.getsockname()[:2]
        where = f"[{host}]" if ":" in host else host

        def ready():
            print(f"sttrl serve: {served.name} ({cfg.engine} engine, {cfg.adaptation_method}, "
                  f"{served.adapter}) on http://{where}:{port}/v1", flush=True)

        app = make_app(worker, served, engine.tokenizer, metrics, on_ready=ready)
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        engine.close()
    print("sttrl serve: stopped", file=sys.stderr)
    return 0
