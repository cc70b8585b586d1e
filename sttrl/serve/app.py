"""The HTTP layer: OpenAI's routes on FastAPI. Each request is checked here (key, size, JSON,
fields, the server's limits), queued for the engine's worker, and awaited; a client that
disconnects while it waits sets its job's cancel flag. Every refusal is a 4xx in OpenAI's error
body, and nothing a request sends can stop the server.
"""
from __future__ import annotations

import asyncio
import hmac
import queue
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sttrl.serve.answer import Cancelled, Outcome
from sttrl.serve.metrics import Metrics
from sttrl.serve.schema import (MAX_BODY_BYTES, BadRequest, ChatRequest, CompletionRequest,
                                Limits, completion_prompt, parse_body, to_job)
from sttrl.serve.worker import Ticket, Worker

DISCONNECT_POLL_S = 0.2
MAX_CHARS_PER_TOKEN = 32  # as run.py: no tokenizer packs more characters into one token


@dataclass(frozen=True)
class Served:
    """What the routes need to know besides the worker."""

    name: str
    """The model id clients name (`GET /v1/models`)."""
    limits: Limits
    api_key: str | None
    max_context: int | None
    adapter: str
    """lora or full: what each request adapts and what the reset restores."""
    test_probe: bool
    """Expose GET /test/probe (tests only)."""


def chat_prompt(tokenizer, messages) -> str:
    """The messages through the model's chat template (plain `role: text` lines without one)."""
    turns = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
             for m in messages]
    if getattr(tokenizer, "chat_template", None):
        try:
            return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        except Exception as err:  # jinja's TemplateError: "roles must alternate" and the like
            raise BadRequest(400, f"messages: the model's chat template refuses them ({err})",
                             param="messages") from None
    return "".join(f"{t['role']}: {t['content']}\n" for t in turns) + "assistant: "


def make_app(worker: Worker, served: Served, tokenizer, metrics: Metrics,
             on_ready=None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app):
        worker.start()
        if on_ready:
            on_ready()
        yield
        await asyncio.to_thread(worker.stop)

    app = FastAPI(title="sttrl serve", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, err: BadRequest):
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return JSONResponse(BadRequest(err.status_code, str(err.detail), kind=kind).body(),
                            status_code=err.status_code)

    def authorize(request: Request) -> None:
        if served.api_key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), served.api_key.encode()):
            raise BadRequest(401, "invalid or missing API key (Authorization: Bearer KEY)",
                             code="invalid_api_key")

    async def read_body(request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise BadRequest(413, f"the request body is {length} bytes; at most {MAX_BODY_BYTES}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise BadRequest(413, f"the request body passes {MAX_BODY_BYTES} bytes")
        return bytes(body)

    def check_model(name: str) -> None:
        if name != served.name:
            raise BadRequest(404, f"the model {name!r} does not exist; this server serves "
                             f"{served.name!r}", param="model", code="model_not_found")

    def check_chars(prompt: str) -> None:
        # before the worker tokenises it: a prompt this long cannot fit any context
        if served.max_context and len(prompt) > MAX_CHARS_PER_TOKEN * served.max_context:
            raise BadRequest(400, f"the prompt is {len(prompt):,} characters, far beyond the "
                             f"model's context of {served.max_context} tokens",
                             param="messages", code="context_length_exceeded")

    async def submit(request: Request, job) -> Outcome:
        loop = asyncio.get_running_loop()
        ticket = Ticket(job, loop, loop.create_future())
        try:
            worker.submit(ticket)
        except queue.Full:
            metrics.count("rejected")
            wait = max(1, round(metrics.mean_request_seconds() * (worker.queue.qsize() + 1)))
            raise BadRequest(429, f"the server is busy ({worker.queue.qsize()} requests "
                             "waiting); retry later", kind="rate_limit_error",
                             code="queue_full", headers={"Retry-After": str(wait)}) from None
        while True:
            done, _ = await asyncio.wait({ticket.future}, timeout=DISCONNECT_POLL_S)
            if done:
                break
            if not ticket.cancelled.is_set() and await request.is_disconnected():
                ticket.cancelled.set()  # the worker stops at its next phase boundary
        result = ticket.future.result()
        if isinstance(result, Cancelled):
            raise BadRequest(499, "the client closed the request", code="cancelled")
        if isinstance(result, BadRequest):
            raise result
        if isinstance(result, BaseException):
            raise BadRequest(500, f"the request failed in the engine ({type(result).__name__}: "
                             f"{result}); the server goes on", kind="server_error")
        result.facts["adapter"] = served.adapter
        return result

    async def checked(request: Request, kind):
        """The request body as `kind` (any problem: a 4xx, counted)."""
        try:
            authorize(request)
            req = parse_body(await read_body(request), kind)
            check_model(req.model)
            return req
        except BadRequest:
            metrics.count("bad_request")
            raise

    def job_of(req, prompt: str):
        try:
            check_chars(prompt)
            return to_job(req, prompt, served.limits, uuid.uuid4().hex)
        except BadRequest:
            metrics.count("bad_request")
            raise

    def counted(build, *args):
        """A request's prompt; a bad one is counted before its 400 goes out."""
        try:
            return build(*args)
        except BadRequest:
            metrics.count("bad_request")
            raise

    def usage(out: Outcome) -> dict:
        return {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
                "total_tokens": out.prompt_tokens + out.completion_tokens}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = await checked(request, ChatRequest)
        job = job_of(req, counted(chat_prompt, tokenizer, req.messages))
        out = await submit(request, job)
        return {"id": f"chatcmpl-{job.id}", "object": "chat.completion",
                "created": int(time.time()), "model": served.name,
                "choices": [{"index": i, "message": {"role": "assistant", "content": text},
                             "finish_reason": finish, "logprobs": None}
                            for i, (text, finish) in enumerate(out.choices)],
                "usage": usage(out), "sttrl": out.facts}

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = await checked(request, CompletionRequest)
        job = job_of(req, counted(completion_prompt, req))
        out = await submit(request, job)
        return {"id": f"cmpl-{job.id}", "object": "text_completion",
                "created": int(time.time()), "model": served.name,
                "choices": [{"index": i, "text": text, "finish_reason": finish,
                             "logprobs": None} for i, (text, finish) in enumerate(out.choices)],
                "usage": usage(out), "sttrl": out.facts}

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [{"id": served.name, "object": "model",
                                            "created": 0, "owned_by": "sttrl"}]}

    @app.get("/health")
    async def health():
        if not worker.alive():
            return JSONResponse({"status": "engine worker stopped"}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.render(worker.queue.qsize(), worker.running,
                                                len(worker.sessions)),
                                 media_type="text/plain; version=0.0.4")

    if served.test_probe:
        @app.get("/test/probe")
        async def probe():
            loop = asyncio.get_running_loop()
            ticket = Ticket(None, loop, loop.create_future())
            # tests only: waits for room in the queue rather than refusing
            await asyncio.to_thread(worker.queue.put, ticket)
            result = await ticket.future
            if isinstance(result, BaseException):
                raise result
            return result

    return app
