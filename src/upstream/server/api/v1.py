"""/v1: the OpenAI-compatible chat API, and feedback on what it served.

Applications point an OpenAI client at `http://HUB/v1` with an Upstream token as the API
key. Errors under /v1 take OpenAI's shape (`{"error": {"message", "type", "param",
"code"}}`) so those clients raise their usual exceptions.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from upstream import feedback, serving
from upstream.access import Actor
from upstream.hub import Hub
from upstream.server.body import StrictRoute
from upstream.server.deps import bearer, get_actor, get_hub
from upstream.shapes import Shape

FEEDBACK_HEADER = "X-Feedback-Token"


class OpenAIErrorDetail(Shape):
    message: str = Field(description="what is wrong and what is allowed, for a person")
    type: str = Field(description="invalid_request_error, authentication_error, …")
    param: str | None = Field(description="the input at fault (`temperature`), if one is")
    code: str = Field(description="Upstream's machine-readable code: not_found, …")


class OpenAIErrorBody(Shape):
    """The shape of every error under /v1: OpenAI's."""

    error: OpenAIErrorDetail


OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": OpenAIErrorBody}
    for status in (400, 401, 403, 404, 409, 413, 422, 429, 503, 504)
}
router = APIRouter(tags=["serving"], route_class=StrictRoute, responses=OPENAI_ERRORS)


def get_feedback_actor(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
) -> Actor:
    """An API token, or the feedback token of the response the feedback is about."""
    if credentials is not None and credentials.credentials.startswith(serving.TOKEN_PREFIX):
        return serving.authenticate_token(get_hub(request), credentials.credentials)
    return get_actor(request, credentials)


@router.get("/models", response_model=serving.ModelsOut)
def list_models(hub: Hub = Depends(get_hub)) -> dict[str, Any]:
    """Every model id this hub serves: `name` (its `latest`), `name@tag`, `name@rev`, and
    `name@rev+pr:N` for an open contribution's candidate."""
    return {"object": "list", "data": serving.served_models(hub)}


@router.get("/models/{model_id:path}", response_model=serving.ModelOut)
def get_model(model_id: str, hub: Hub = Depends(get_hub)) -> dict[str, Any]:
    """One served model id (any the hub resolves, listed or not)."""
    served = serving.resolve_served(hub, model_id)
    listed = {m["id"]: m for m in serving.served_models(hub)}
    return listed.get(model_id) or {"id": served.served_as, "created": 0, "owned_by": "upstream"}


@router.post(
    "/chat/completions",
    response_model=None,
    responses={
        200: {
            "model": serving.CompletionOut,
            "content": {"text/event-stream": {"schema": {"type": "object"}}},
            "description": "the completion; with `stream: true`, chat.completion.chunk events",
        }
    },
)
async def chat_completions(
    body: serving.ChatIn, actor: Actor = Depends(get_actor), hub: Hub = Depends(get_hub)
) -> Any:
    """A chat completion (`stream: true` for server-sent events). Temperature defaults to
    0 (greedy, reproducible). The answer carries `feedback_token` (and the
    X-Feedback-Token header): a bearer token for POST /v1/feedback on this response only."""
    if body.stream:
        return await _stream(hub, actor, body)
    pending = await run_in_threadpool(serving.start_chat, hub, actor, body)
    result = await _result(hub, pending)
    completion = await run_in_threadpool(serving.finish_chat, hub, pending, result)
    return JSONResponse(completion, headers={FEEDBACK_HEADER: completion["feedback_token"]})


async def _result(hub: Hub, pending: serving.Pending) -> Any:
    try:
        return await asyncio.wait_for(
            asyncio.wrap_future(pending.ticket.result), hub.settings.serve_timeout
        )
    except TimeoutError:
        raise serving.timed_out(hub, pending) from None
    except asyncio.CancelledError:  # the client went away
        pending.ticket.cancel()
        raise


async def _stream(hub: Hub, actor: Actor, body: serving.ChatIn) -> StreamingResponse:
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[str] = asyncio.Queue()

    def on_text(delta: str) -> None:  # from the decoding thread
        loop.call_soon_threadsafe(pieces.put_nowait, delta)

    rid = serving.response_id()
    pending = await run_in_threadpool(serving.start_chat, hub, actor, body, on_text, rid)
    token = await run_in_threadpool(serving.feedback_token, hub, rid)
    head = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": pending.created,
        "model": pending.served.served_as,
        "system_fingerprint": serving.fingerprint(pending.served),
    }

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return "data: " + json.dumps({**head, "choices": [choice], **extra}) + "\n\n"

    async def events() -> AsyncIterator[str]:
        finished = False
        try:
            yield chunk({"role": "assistant", "content": ""}, feedback_token=token)
            done = asyncio.ensure_future(_result(hub, pending))
            while not done.done() or not pieces.empty():
                if pieces.empty():
                    got = asyncio.ensure_future(pieces.get())
                    await asyncio.wait({got, done}, return_when=asyncio.FIRST_COMPLETED)
                    if not got.done():
                        got.cancel()
                        continue
                    yield chunk({"content": got.result()})
                else:
                    yield chunk({"content": pieces.get_nowait()})
            result = done.result()
            await run_in_threadpool(serving.finish_chat, hub, pending, result)
            finished = True
            yield chunk({}, serving.finish_reason(result))
            if body.stream_options and body.stream_options.include_usage:
                usage = {**head, "choices": [], "usage": serving.usage(result)}
                yield "data: " + json.dumps(usage) + "\n\n"
            yield "data: [DONE]\n\n"
        except serving.TimedOut as e:
            error = {"message": str(e), "type": "timeout", "param": None, "code": "timeout"}
            yield "data: " + json.dumps({"error": error}) + "\n\n"
        finally:
            if not finished:
                pending.ticket.cancel()

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={FEEDBACK_HEADER: token, "Cache-Control": "no-cache"},
    )


@router.post("/feedback", response_model=feedback.FeedbackOut)
def post_feedback(
    body: feedback.FeedbackIn,
    actor: Actor = Depends(get_feedback_actor),
    hub: Hub = Depends(get_hub),
) -> dict[str, Any]:
    """Feedback on a served response: `value` +1/-1 (a thumb), a score from 0 to 1, or a
    label; `comment`; `correction` (what it should have said). Authorised by the
    response's feedback token or an API token. The same `feedback_id` again updates it.
    Negative feedback files a report, named in `report_id`."""
    return feedback.give(hub, actor, body)
