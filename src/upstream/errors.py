"""Domain errors: what a user did wrong, said so they can fix it.

Interfaces turn `UpstreamError` into exit code 2 (CLI) or an HTTP 4xx (API) with its
message; anything else is a bug and keeps its traceback. The API sends every 4xx as
`{"error": {"code": CODE, "message": MESSAGE, "field": FIELD-OR-NULL}}`.
"""

from collections.abc import Sequence
from typing import Any


def input_place(loc: Sequence[Any]) -> str:
    """Where in the input a validation error is (`messages.0.content`), from pydantic's
    `loc`, without the parts it adds for itself: `body`, the branch of a union (`str`, a
    model's class name) and validators (`function-after[...]`)."""
    return ".".join(
        str(x)
        for x in loc
        if x != "body"
        and not (
            isinstance(x, str) and (x == "str" or x[:1].isupper() or x.startswith("function-"))
        )
    )


class UpstreamError(Exception):
    """A user-facing error: the message names what is wrong and what is allowed;
    `field`, when one input is to blame, names it (`messages.0.content`)."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFound(UpstreamError):
    """A named thing (model, revision, job, blob) does not exist."""

    status_code = 404
    code = "not_found"


class Conflict(UpstreamError):
    """The request is valid but clashes with what is stored (e.g. an ambiguous prefix)."""

    status_code = 409
    code = "conflict"


class InvalidInput(UpstreamError):
    """Input that cannot be accepted: a bad file, a bad value, an unsupported format."""

    status_code = 422
    code = "invalid_input"


class Unavailable(UpstreamError):
    """Something the hub depends on (a model server) did not answer properly."""

    status_code = 502
    code = "unavailable"


class Unauthorized(UpstreamError):
    """No identity, or one that is not valid (an unknown, expired or revoked token)."""

    status_code = 401
    code = "unauthorized"


class Forbidden(UpstreamError):
    """The acting user may not do this (e.g. approve their own contribution)."""

    status_code = 403
    code = "forbidden"


class TooLarge(UpstreamError):
    """A request or upload over the hub's size limit."""

    status_code = 413
    code = "too_large"


class TooMany(UpstreamError):
    """Over a rate limit; the client should wait and try again."""

    status_code = 429
    code = "rate_limited"
