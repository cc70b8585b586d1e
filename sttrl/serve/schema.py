"""What a client may send, checked before anything is queued: the OpenAI request bodies
(chat and plain completions), STTRL's per-request options bounded by the server's limits, and
the OpenAI error body every refusal is written in.

A request can only lower what the server was started with (sample counts, steps, tokens): the
server's flags are its defaults and its limits. No field names a file, a model path or a folder.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_BODY_BYTES = 1 << 20  # 1 MiB: far above any prompt the context holds, far below harm
MAX_MESSAGES = 256
MAX_USER_CHARS = 128  # a session name
ROLES = ("system", "developer", "user", "assistant")


class BadRequest(Exception):
    """A request the server refuses: HTTP status, OpenAI error type, message, offending field."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 kind: str = "invalid_request_error", code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.kind, self.code = (status, message, param,
                                                                       kind, code)
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(
            p.text for p in self.content)


class Options(BaseModel):
    """STTRL's per-request options (the body's `sttrl` object), each bounded by the server's."""

    model_config = ConfigDict(extra="forbid")
    n_votes: int | None = Field(None, ge=1)
    """Samples drawn for the vote (at most the server's --n_votes)."""
    n_train: int | None = Field(None, ge=1)
    """Voted samples trained on (at most n_votes and the server's --n_train)."""
    steps: int | None = Field(None, ge=0)
    """Optimiser steps (at most the server's --steps_per_question; 0: answer with the base)."""
    min_majority_ratio: float | None = Field(None, ge=0, le=1)
    """No update below this vote share (the server's --min_majority_ratio by default)."""
    answer_mode: Literal["majority", "sample"] = "majority"
    """majority: a sample whose answer is the majority of the adapted model's answers;
    sample: plain samples of the adapted model."""
    task: Literal["math", "gpqa"] = "math"
    """How answers are read for the vote: a number or expression, or an option letter."""


class Common(BaseModel):
    """The fields chat and plain completions share; unknown OpenAI fields are ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, lt=2**31)
    user: str | None = Field(None, max_length=MAX_USER_CHARS)
    stream: bool | None = False
    sttrl: Options = Field(default_factory=Options)


class ChatRequest(Common):
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(Common):
    prompt: str | list[str]
    echo: bool | None = False
    logprobs: int | None = None


@dataclass(frozen=True)
class Limits:
    """The server's flags as every request's defaults and ceilings."""

    n_votes: int
    n_train: int
    n_eval: int
    """The answer samples in majority mode, and the most choices (`n`) a request may ask."""
    steps: int
    max_new_tokens: int
    min_majority_ratio: float


@dataclass(frozen=True)
class Job:
    """One checked request, as the worker runs it."""

    id: str
    prompt: str
    n: int
    max_tokens: int
    temperature: float | None
    top_p: float | None
    seed: int | None
    user: str | None
    n_votes: int
    n_train: int
    steps: int
    min_majority_ratio: float
    answer_mode: str
    task: str


def parse_body(raw: bytes, kind: type[Common]) -> Common:
    """The request body as `kind`, or a 400 naming the first problem."""
    if len(raw) > MAX_BODY_BYTES:
        raise BadRequest(413, f"the request body is {len(raw)} bytes; at most {MAX_BODY_BYTES}")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadRequest(400, f"the body is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise BadRequest(400, "the body must be a JSON object")
    try:
        return kind.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        param = ".".join(str(x) for x in first["loc"]) or None
        raise BadRequest(400, f"{param}: {first['msg']}" if param else first["msg"],
                         param=param) from None


def bounded(name: str, value: int | float | None, default, ceiling, param: str):
    if value is None:
        return default
    if value > ceiling:
        raise BadRequest(400, f"{param} is {value}; this server allows at most {ceiling} "
                         f"(its --{name})", param=param)
    return value


def to_job(req: Common, prompt: str, limits: Limits, job_id: str) -> Job:
    """The request's job with every option inside the server's limits, or a 400."""
    if req.stream:
        raise BadRequest(400, "stream: streaming is not supported (the answer comes after the "
                         "update)", param="stream")
    o = req.sttrl
    max_tokens = getattr(req, "max_completion_tokens", None) or req.max_tokens
    n_votes = bounded("n_votes", o.n_votes, limits.n_votes, limits.n_votes, "sttrl.n_votes")
    n_train = bounded("n_train", o.n_train, min(limits.n_train, n_votes), limits.n_train,
                      "sttrl.n_train")
    if n_train > n_votes:
        raise BadRequest(400, f"sttrl.n_train ({n_train}) must not exceed n_votes ({n_votes})",
                         param="sttrl.n_train")
    return Job(
        id=job_id, prompt=prompt, n=bounded("n_eval", req.n, 1, limits.n_eval, "n"),
        max_tokens=bounded("max_new_tokens", max_tokens, limits.max_new_tokens,
                           limits.max_new_tokens, "max_tokens"),
        temperature=req.temperature, top_p=req.top_p, seed=req.seed, user=req.user,
        n_votes=n_votes, n_train=n_train,
        steps=bounded("steps_per_question", o.steps, limits.steps, limits.steps, "sttrl.steps"),
        min_majority_ratio=(limits.min_majority_ratio if o.min_majority_ratio is None
                            else o.min_majority_ratio),
        answer_mode=o.answer_mode, task=o.task)


def completion_prompt(req: CompletionRequest) -> str:
    if req.echo or req.logprobs:
        raise BadRequest(400, "echo and logprobs are not supported (the server answers with an "
                         "adapted model, it does not score text)",
                         param="echo" if req.echo else "logprobs")
    if isinstance(req.prompt, list):
        if len(req.prompt) != 1:
            raise BadRequest(400, "prompt: one prompt per request (each adapts the model on its "
                             "own)", param="prompt")
        return req.prompt[0]
    return req.prompt
