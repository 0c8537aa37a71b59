"""An engine that calls an OpenAI-compatible HTTP server (vLLM, llama.cpp server, ...).

Requests run concurrently on a thread pool that shares one HTTP client; results come
back in request order. Connection errors, timeouts, HTTP 429 and 5xx are retried with
exponential backoff (a server's Retry-After wins, capped); any other 4xx is the caller's
mistake and raises at once. Generation is greedy (temperature 0), so a result is as
reproducible as the server makes it.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from upstream.engines.base import (
    MAX_PROMPT_CHARS,
    GenRequest,
    GenResult,
    ResultFn,
    cut_at_stop,
)
from upstream.errors import InvalidInput, Unavailable, UpstreamError

MAX_RETRY_AFTER = 60.0  # seconds; a longer Retry-After from the server is cut to this
JITTER = 0.1  # up to this fraction is added to each backoff, so workers do not retry in step


class _Retryable(Exception):
    """A failed attempt worth trying again; the message says what went wrong."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds, when the server asked for a wait


class OpenAIEngine:
    """Runs generation requests against `{base_url}/chat/completions`."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        concurrency: int = 8,
        max_retries: int = 4,
        timeout: float = 120.0,  # seconds, for each of connect, read, write and pool
        backoff: float = 0.5,  # seconds before the first retry; doubles on each next one
        max_chars: int = MAX_PROMPT_CHARS,  # characters of prompt allowed per request
    ) -> None:
        for field, value, low in [
            ("concurrency", concurrency, 1),
            ("max_retries", max_retries, 0),
            ("backoff", backoff, 0),
        ]:
            if value < low:
                raise InvalidInput(f"{field} {value}: must be at least {low}")
        if timeout <= 0:
            raise InvalidInput(f"timeout {timeout}: must be more than 0 seconds")
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.model = model
        self.api_key = api_key
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.backoff = backoff
        self.max_chars = max_chars
        self.name = f"openai:{model}@{self.base_url}"

    def generate(
        self, requests: Sequence[GenRequest], on_result: ResultFn | None = None
    ) -> list[GenResult]:
        """Run `requests` concurrently; one result per request, in request order."""
        for req in requests:
            req.validate(self.max_chars)
        total = len(requests)
        if total == 0:
            return []
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        workers = min(self.concurrency, total)
        limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
        cancelled = threading.Event()  # set when one request fails: the others stop retrying
        results: dict[int, GenResult] = {}
        with httpx.Client(headers=headers, timeout=self.timeout, limits=limits) as client:
            pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai-engine")
            try:
                futures = {
                    pool.submit(self._run_one, client, req, cancelled): i
                    for i, req in enumerate(requests)
                }
                for future in as_completed(futures):
                    i = futures[future]
                    results[i] = future.result()
                    if on_result is not None:
                        on_result(i, results[i])
            except BaseException:
                cancelled.set()
                raise
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        return [results[i] for i in range(total)]

    def _run_one(
        self, client: httpx.Client, req: GenRequest, cancelled: threading.Event
    ) -> GenResult:
        """Send one request, retrying transient failures, and parse the reply."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": req.messages,
            "max_tokens": req.max_new_tokens,
            "temperature": 0,
        }
        if req.stop:
            body["stop"] = list(req.stop)
        attempts = self.max_retries + 1
        last: _Retryable | None = None
        for attempt in range(attempts):
            try:
                return self._parse(self._post(client, body), req)
            except _Retryable as e:
                last = e
                if attempt + 1 < attempts and cancelled.wait(self._delay(attempt, e.retry_after)):
                    raise UpstreamError(f"{self.url}: cancelled; another request failed") from e
        raise Unavailable(f"{self.url}: gave up after {attempts} attempts; last error: {last}")

    def _post(self, client: httpx.Client, body: dict[str, Any]) -> Any:
        """One attempt: the decoded JSON reply, or `_Retryable` / `UpstreamError`."""
        try:
            resp = client.post(self.url, json=body)
        except httpx.TimeoutException as e:
            raise _Retryable(f"timed out after {self.timeout:g} s ({type(e).__name__})") from e
        except httpx.TransportError as e:
            raise _Retryable(f"{type(e).__name__}: {e}") from e
        status = resp.status_code
        if status == 429 or status >= 500:
            raise _Retryable(f"HTTP {status}: {_server_message(resp)}", _retry_after(resp))
        if not resp.is_success:
            raise UpstreamError(f"{self.url} answered HTTP {status}: {_server_message(resp)}")
        try:
            return resp.json()
        except ValueError:
            raise UpstreamError(
                f"{self.url} answered with a body that is not JSON: {resp.text[:200]!r}"
            ) from None

    def _parse(self, data: Any, req: GenRequest) -> GenResult:
        """Turn a chat completion into a GenResult, naming any field the reply lacks."""
        choice = _dig(data, ("choices", 0), self.url)
        content = _dig(choice, ("message", "content"), self.url, prefix="choices[0]")
        if content is None:  # e.g. a reply that was all reasoning: the answer is empty
            content = ""
        if not isinstance(content, str):
            raise UpstreamError(f"{self.url}: choices[0].message.content is not a string")
        text, stopped = cut_at_stop(content, req.stop)
        length = choice.get("finish_reason") == "length" and not stopped
        usage = data.get("usage") or {}
        return GenResult(
            text=text,
            finish_reason="length" if length else "stop",
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number `attempt + 1`."""
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER)
        return self.backoff * 2**attempt * (1 + random.uniform(0, JITTER))


def _dig(data: Any, path: tuple[str | int, ...], url: str, prefix: str = "") -> Any:
    """Follow `path` into a JSON reply; UpstreamError naming the first missing step."""
    node, where = data, prefix
    for key in path:
        where += f"[{key}]" if isinstance(key, int) else (f".{key}" if where else key)
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            raise UpstreamError(
                f"{url}: the reply has no {where}; it was {str(data)[:200]}"
            ) from None
    return node


def _server_message(resp: httpx.Response) -> str:
    """The server's own words about an error, from the usual JSON shapes or the text."""
    try:
        data = resp.json()
    except ValueError:
        return resp.text[:300].strip() or resp.reason_phrase
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for value in (error, data.get("detail"), data.get("message")):
            if value:
                return str(value)
    return str(data)[:300]


def _retry_after(resp: httpx.Response) -> float | None:
    """Seconds the server asked us to wait (delta-seconds or an HTTP date), if any."""
    value = resp.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
