"""Serving revisions through the OpenAI chat API, and the trace of every response.

A served model id names a revision the way the rest of the hub does, plus a
contribution's candidate:

    smol            the revision tagged `latest`
    smol@v2         a tag          smol@3f2a9c1e0b7d   a revision id (prefix)
    smol@3f2a9c1e0b7d+pr:4        that revision with contribution 4's adapter

Requests to one loaded model share one decoding loop (engines.serving). Temperature
defaults to 0, unlike OpenAI's 1: a greedy answer is the one a report's reproduction
gives back, token for token, so what a user flags can be run again exactly.

Every answer is stored as a trace (messages and output unless the hub keeps no
prompts, settings, revision and adapter, usage, latency, the token's user, consent and
licence) with the OpenTelemetry GenAI attribute names, and carries a signed feedback
token good for feedback on that response only (feedback.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from upstream.access import ANONYMOUS_NAME, Actor, require
from upstream.checks import parse_check
from upstream.contributions import contribution_adapter, get_contribution
from upstream.db.schema import (
    ApiToken,
    Contribution,
    Feedback,
    HubSecret,
    Revision,
    Trace,
    utcnow,
)
from upstream.embeddings import embed  # loads its model only when a check needs it
from upstream.engines.base import MAX_NEW_TOKENS, GenRequest, GenResult
from upstream.engines.serving import Sampling, Ticket, batcher_for, stop_all
from upstream.errors import InvalidInput, NotFound, Unauthorized, UpstreamError
from upstream.hub import Hub
from upstream.registry import list_models, resolve
from upstream.reports import ReportIn, prepare
from upstream.shapes import Shape
from upstream.threads import in_fresh_thread

TOKEN_PREFIX = "fb_"  # a feedback token; API tokens start with up_
MAX_TOKEN_CHARS = 200
MAX_STOP = 4  # stop strings per request, as OpenAI allows
MAX_STOP_CHARS = 100
MODEL_ID = re.compile(r"(?P<ref>[^+\s]+)(?:\+pr:(?P<pr>\d{1,18}))?")
# contributions whose candidate can be served: checked or waiting, not merged or dropped
SERVABLE_STATES = ("open", "checking", "passed", "failed", "approved")


class TimedOut(UpstreamError):
    status_code = 504
    code = "timeout"


# ---------------------------------------------------------------- request bodies


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=100_000)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatIn(BaseModel):
    """An OpenAI chat completion request (the fields Upstream honours; others are
    ignored, as OpenAI-compatible servers do, except those that would change the answer
    and are not supported, which are refused)."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(max_length=200, description="name, name@rev, name@tag, name@rev+pr:N")
    messages: list[ChatMessage] = Field(min_length=1, max_length=100)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)
    temperature: float | None = Field(None, ge=0, le=2, description="default 0: greedy")
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    user: str | None = Field(None, max_length=200, description="kept in the trace")

    @field_validator("stop")
    @classmethod
    def _stop(cls, stop: str | list[str] | None) -> str | list[str] | None:
        found = [stop] if isinstance(stop, str) else list(stop or [])
        if len(found) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings")
        if any(not s or len(s) > MAX_STOP_CHARS for s in found):
            raise ValueError(f"each stop string: 1 to {MAX_STOP_CHARS} characters")
        return stop

    @property
    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())


# ---------------------------------------------------------------- served models


@dataclass(frozen=True)
class Served:
    """What a served model id names: a revision and perhaps a contribution's adapter."""

    served_as: str
    model: str
    row: Revision = field(repr=False, compare=False)  # for the engine
    contribution: int | None = None
    adapters: tuple[Path, ...] = ()

    @property
    def revision(self) -> str:  # hash
        return self.row.hash

    @property
    def weights(self) -> str:
        """Which weights answer: `REV[+pr:N]`, the revision and the adapter it wears."""
        pr = f"+pr:{self.contribution}" if self.contribution else ""
        return f"{self.revision[:12]}{pr}"


def resolve_served(hub: Hub, model_id: str) -> Served:
    """The revision (and adapter) a served model id names; NotFound or InvalidInput
    naming what is allowed."""
    m = MODEL_ID.fullmatch(model_id.strip())
    if m is None:
        raise InvalidInput(
            f"model {model_id!r}: give name, name@rev, name@tag or name@rev+pr:N", field="model"
        )
    ref, pr = m.group("ref"), m.group("pr")
    with hub.session() as s:
        if pr is None:
            revision = resolve(s, ref)
            return Served(model_id, revision.model.name, revision)
        c = get_contribution(s, int(pr))
        name = ref.partition("@")[0]
        if c.model.name != name:
            raise InvalidInput(f"pr:{pr} is a contribution to {c.model.name}, not {name}", "model")
        revision = resolve(s, ref) if "@" in ref else c.revision
        if revision.id != c.revision_id:
            raise InvalidInput(
                f"pr:{pr} applies to {name}@{c.revision.hash[:12]}, not {revision.hash[:12]}",
                "model",
            )
        if c.state not in SERVABLE_STATES:
            raise InvalidInput(f"pr:{pr} is {c.state}: only open contributions are served", "model")
    adapter = contribution_adapter(hub, str(c.id))
    return Served(model_id, name, revision, c.id, (adapter,))


class AnswerOut(Shape):
    role: Literal["assistant"]
    content: str


class ChoiceOut(Shape):
    index: int
    message: AnswerOut
    finish_reason: str = Field(description="stop (end of turn or a stop string) or length")
    logprobs: None = None


class UsageOut(Shape):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionOut(Shape):
    """OpenAI's chat.completion, plus the response's feedback token."""

    id: str = Field(description="the response id feedback names")
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: str = Field(description="upstream:REVISION[+pr:N]: which weights answered")
    choices: list[ChoiceOut]
    usage: UsageOut
    feedback_token: str = Field(description="bearer token for POST /v1/feedback on this response")


class ModelOut(Shape):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelsOut(Shape):
    object: Literal["list"] = "list"
    data: list[ModelOut]


def served_models(hub: Hub) -> list[dict[str, Any]]:
    """Every servable id: each model, its tags, its revisions, open contributions' candidates."""
    out: list[dict[str, Any]] = []
    with hub.session() as s:
        for model in list_models(s):
            created = int(model.created_at.timestamp()) if model.created_at else 0
            ids = [model.name] + [f"{model.name}@{t.name}" for t in model.tags]
            ids += [f"{model.name}@{r.hash[:12]}" for r in model.revisions]
            contributions = s.scalars(
                select(Contribution)
                .where(Contribution.model_id == model.id)
                .where(Contribution.state.in_(SERVABLE_STATES))
                .order_by(Contribution.id)
            )
            ids += [
                f"{model.name}@{c.revision.hash[:12]}+pr:{c.id}"
                for c in contributions
                if c.pushes and c.pushes[-1].adapter is not None
            ]
            out += [{"id": i, "created": created, "owned_by": "upstream"} for i in ids]
    return out


# ---------------------------------------------------------------- feedback tokens


_keys: dict[str, bytes] = {}  # database URL -> its feedback secret


def _secret(session: Session) -> bytes:
    url = str(session.get_bind().engine.url)
    if url not in _keys:
        found = session.get(HubSecret, "feedback")
        if found is None or not found.value:
            raise AssertionError("the hub has no feedback secret (its database predates 0010?)")
        _keys[url] = found.value.encode()
    return _keys[url]


def _sign(key: bytes, message: str) -> str:
    digest = hmac.new(key, message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def feedback_token(hub: Hub, response_id: str, now: float | None = None) -> str:
    """A token good for feedback on `response_id` only, for `feedback_token_minutes`."""
    expires = int((now or time.time()) + hub.settings.feedback_token_minutes * 60)
    message = f"{response_id}.{expires}"
    with hub.session() as s:
        return f"{TOKEN_PREFIX}{message}.{_sign(_secret(s), message)}"


def authenticate_token(hub: Hub, secret: str) -> Actor:
    """The actor a feedback token stands for: the response's owner, bound to it."""
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > MAX_TOKEN_CHARS:
        raise Unauthorized("not a feedback token (they start with fb_)")
    parts = secret[len(TOKEN_PREFIX) :].rsplit(".", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        raise Unauthorized("a malformed feedback token")
    response, expires, signature = parts
    with hub.session() as s:
        if not hmac.compare_digest(_sign(_secret(s), f"{response}.{expires}"), signature):
            raise Unauthorized("a feedback token this hub did not sign")
        if int(expires) <= time.time():
            raise Unauthorized(
                "this feedback token has expired (they last feedback_token_minutes); "
                "send feedback with an API token instead"
            )
        trace = s.get(Trace, response)
        if trace is None:
            raise NotFound(f"no response {response} (or it is older than trace_retention_days)")
        role = trace.user.role if trace.user is not None else "reporter"
        return Actor(
            owner_name(trace),
            role,
            frozenset({"read"}),
            user_id=trace.user_id,
            bound_to=f"response:{response}",
        )


# ---------------------------------------------------------------- answering


@dataclass
class Pending:
    """A chat request on its way: what was asked, where it is being answered."""

    id: str
    body: ChatIn
    served: Served
    request: GenRequest
    sampling: Sampling
    ticket: Ticket
    actor: Actor
    created: int = field(default_factory=lambda: int(time.time()))
    started: float = field(default_factory=time.perf_counter)


def response_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def start_chat(
    hub: Hub,
    actor: Actor,
    body: ChatIn,
    on_text: Callable[[str], None] | None = None,
    id: str | None = None,
) -> Pending:
    """Check who asks, resolve the model and queue the request with the model's batcher
    (Overloaded when its queue is full)."""
    served = resolve_served(hub, body.model)
    if not (hub.settings.anonymous_serving and actor.anonymous):
        require(actor, "models.serve", served.model)
    limit = body.max_completion_tokens or body.max_tokens or hub.settings.serve_max_tokens
    request = GenRequest(
        messages=[{"role": m.role, "content": m.content} for m in body.messages],
        max_new_tokens=min(limit, MAX_NEW_TOKENS),
        stop=body.stops,
    )
    sampling = Sampling(body.temperature or 0.0, body.top_p or 1.0, body.seed)
    from upstream.engines.hf import load_model

    # see upstream.threads for why a fresh thread
    loaded = in_fresh_thread(load_model, hub, served.row, served.adapters)
    batcher = batcher_for(
        loaded,
        hub.settings.serve_batch_size,
        hub.settings.serve_max_waiting,
        hub.settings.max_prompt_chars,
    )
    ticket = batcher.submit(request, sampling, on_text)
    return Pending(id or response_id(), body, served, request, sampling, ticket, actor)


def wait(hub: Hub, pending: Pending) -> GenResult:
    """The result of a pending chat (from a worker thread), or TimedOut."""
    try:
        return pending.ticket.result.result(timeout=hub.settings.serve_timeout)
    except TimeoutError:
        raise timed_out(hub, pending) from None


def timed_out(hub: Hub, pending: Pending) -> TimedOut:
    """Stop a chat that took too long; the error to answer with."""
    pending.ticket.cancel()
    return TimedOut(f"no answer within {hub.settings.serve_timeout:g} s (setting serve_timeout)")


def finish_chat(hub: Hub, pending: Pending, result: GenResult) -> dict[str, Any]:
    """Store the trace of a finished chat; the OpenAI completion (with its feedback token)."""
    latency_ms = (time.perf_counter() - pending.started) * 1000
    record_trace(hub, pending, result, latency_ms)
    return {
        "id": pending.id,
        "object": "chat.completion",
        "created": pending.created,
        "model": pending.served.served_as,
        "system_fingerprint": fingerprint(pending.served),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "finish_reason": finish_reason(result),
                "logprobs": None,
            }
        ],
        "usage": usage(result),
        "feedback_token": feedback_token(hub, pending.id),
    }


def fingerprint(served: Served) -> str:
    """Which weights answered: the revision, and the contribution whose adapter it wore."""
    return f"upstream:{served.weights}"


def finish_reason(result: GenResult) -> str:
    return "length" if result.finish_reason == "length" else "stop"


def usage(result: GenResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def record_trace(hub: Hub, pending: Pending, result: GenResult, latency_ms: float) -> None:
    """Store what was served, under the OpenTelemetry GenAI names, and now and then drop
    traces older than the retention."""
    body, served, actor = pending.body, pending.served, pending.actor
    settings = {
        "max_tokens": pending.request.max_new_tokens,
        "temperature": pending.sampling.temperature,
        "top_p": pending.sampling.top_p,
        "seed": pending.sampling.seed,
        "stop": list(pending.request.stop),
    }
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "upstream",
        "gen_ai.request.model": body.model,
        "gen_ai.response.model": f"{served.model}@{served.weights}",
        "gen_ai.response.id": pending.id,
        "gen_ai.request.max_tokens": settings["max_tokens"],
        "gen_ai.request.temperature": settings["temperature"],
        "gen_ai.request.top_p": settings["top_p"],
        "gen_ai.request.seed": settings["seed"],
        "gen_ai.request.stop_sequences": settings["stop"],
        "gen_ai.response.finish_reasons": [finish_reason(result)],
        "gen_ai.usage.input_tokens": result.prompt_tokens,
        "gen_ai.usage.output_tokens": result.completion_tokens,
        "server.duration_ms": round(latency_ms, 1),
        **({"user.id": body.user} if body.user else {}),
    }
    keep = hub.settings.trace_prompts
    with hub.session() as s, s.begin():
        token = s.get(ApiToken, actor.token_id) if actor.token_id is not None else None
        s.add(
            Trace(
                id=pending.id,
                model_id=served.row.model_id,
                revision_id=served.row.id,
                contribution_id=served.contribution,
                served_as=served.served_as[:200],
                user_id=actor.user_id,
                token_id=actor.token_id,
                consent=bool(token and token.consent),
                license=token.license if token else "CC-BY-4.0",
                messages=pending.request.messages if keep else None,
                output=result.text if keep else None,
                settings=settings,
                finish_reason=finish_reason(result),
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
                latency_ms=latency_ms,
                attributes=attributes,
            )
        )
    _purge_now_and_then(hub)


_last_purge: dict[str, float] = {}
_purge_lock = threading.Lock()
PURGE_EVERY = 600.0  # seconds between purges in one process


def _purge_now_and_then(hub: Hub) -> None:
    key = str(hub.settings.home)
    with _purge_lock:
        if time.monotonic() - _last_purge.get(key, -PURGE_EVERY) < PURGE_EVERY:
            return
        _last_purge[key] = time.monotonic()
    purge_traces(hub)


def purge_traces(hub: Hub) -> int:
    """Delete traces older than `trace_retention_days` and their feedback (the reports
    feedback filed stay); how many traces went."""
    days = hub.settings.trace_retention_days
    if days <= 0:
        return 0
    cutoff = utcnow() - timedelta(days=days)
    with hub.session() as s, s.begin():
        old = select(Trace.id).where(Trace.created_at < cutoff)
        s.execute(delete(Feedback).where(Feedback.trace_id.in_(old)))
        gone = s.execute(delete(Trace).where(Trace.created_at < cutoff))
        return int(getattr(gone, "rowcount", 0) or 0)


def owner_name(trace: Trace) -> str:
    """Whose response a trace is: its token's user, or anonymous."""
    return trace.user.name if trace.user is not None else ANONYMOUS_NAME


def preview(hub: Hub, actor: Actor, item: ReportIn) -> dict[str, Any]:
    """The filing form's preview: what the model answers a report's input now (greedily,
    as its reproduction will) and its check's verdict on that answer. Nothing is kept."""
    if item.expected is None:
        raise InvalidInput("build a check to preview it", field="expected")
    with hub.session() as s:
        prepared = prepare(s, item, hub.settings.max_prompt_chars)
        model = resolve(s, item.model).model.name
    require(actor, "reports.file", model)
    check = parse_check(item.expected)
    body = ChatIn.model_validate(
        {"model": item.model, "messages": prepared.messages, "max_tokens": item.max_new_tokens}
    )
    pending = start_chat(hub, actor, body)
    result = wait(hub, pending)
    outcome = check.score(result.text, embed)
    return {
        "output": result.text,
        "passed": outcome.passed,
        "score": outcome.score,
        "explanation": outcome.explanation,
        "revision": pending.served.row.hash,
    }


def stop() -> None:
    """Stop the decoding threads of this process (the server is shutting down)."""
    stop_all()
