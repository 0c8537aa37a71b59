"""Request bodies read strictly: JSON that is too deep, or text that is not Unicode, is
the client's mistake (a 4xx), never a crash deeper in the hub.

Every router uses `StrictRoute`, whose requests decode JSON through `strict_json`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from upstream.errors import InvalidInput

MAX_DEPTH = 32  # no body of the API nests deeper than a handful of levels


def strict_json(body: bytes) -> Any:
    """`body` as JSON, refused (InvalidInput) when nested deeper than MAX_DEPTH or
    holding text that is not valid Unicode (a lone surrogate such as "\\ud800")."""
    try:
        data = json.loads(body)
    except RecursionError as e:
        raise InvalidInput(f"the body nests deeper than {MAX_DEPTH} levels") from e
    stack: list[tuple[Any, int, str]] = [(data, 0, "")]
    while stack:
        value, depth, where = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidInput(f"the body nests deeper than {MAX_DEPTH} levels")
        if isinstance(value, str):
            _check_text(value, where)
        elif isinstance(value, dict):
            for k, v in value.items():
                _check_text(k, where)
                stack.append((v, depth + 1, f"{where}.{k}" if where else k))
        elif isinstance(value, list):
            stack.extend((v, depth + 1, f"{where}.{i}") for i, v in enumerate(value))
    return data


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidInput(
            f"{where or 'body'}: text that is not valid Unicode (a lone surrogate "
            f"{text[e.start]!r} at character {e.start})",
            field=where or None,
        ) from e


class StrictRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = strict_json(await self.body())
            except InvalidInput as e:  # FastAPI answers all but an HTTPException as a bare 400
                raise BodyRefused(str(e), e.field) from e
        return self._json


class BodyTooLarge(HTTPException):
    """A body beyond the hub's limit, found while it streamed in (no Content-Length)."""

    code = "too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"the body is over {limit} bytes")


class BodyLimit:
    """ASGI middleware: a request body of more than `limit` bytes is never read whole.

    One that says its length is refused before a byte is read (by the app's guard, in
    the one error shape); one sent in chunks is counted as it arrives and refused the
    moment it passes the limit."""

    def __init__(self, app: ASGIApp, limit: int, streamed: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.limit = limit
        self.streamed = streamed  # paths that stream to disk with their own cap

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.streamed:
            await self.app(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counted, send)


class BodyRefused(HTTPException):
    """A body refused while it was decoded: 422 `invalid_input`, naming the field."""

    code = "invalid_input"

    def __init__(self, message: str, field: str | None) -> None:
        super().__init__(status_code=422, detail=message)
        self.field = field


class StrictRoute(APIRoute):
    """A route whose JSON body is decoded by `strict_json`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictRequest(request.scope, request.receive))

        return strict
