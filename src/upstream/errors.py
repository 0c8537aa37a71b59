"""Domain errors: what a user did wrong, said so they can fix it.

Interfaces turn `UpstreamError` into exit code 2 (CLI) or an HTTP 4xx (API) with its
message; anything else is a bug and keeps its traceback.
"""


class UpstreamError(Exception):
    """A user-facing error: the message names what is wrong and what is allowed."""

    status_code = 400


class NotFound(UpstreamError):
    """A named thing (model, revision, job, blob) does not exist."""

    status_code = 404


class Conflict(UpstreamError):
    """The request is valid but clashes with what is stored (e.g. an ambiguous prefix)."""

    status_code = 409


class InvalidInput(UpstreamError):
    """Input that cannot be accepted: a bad file, a bad value, an unsupported format."""

    status_code = 422


class Unavailable(UpstreamError):
    """Something the hub depends on (a model server) did not answer properly."""

    status_code = 502


class Forbidden(UpstreamError):
    """The acting user may not do this (e.g. approve their own contribution)."""

    status_code = 403
