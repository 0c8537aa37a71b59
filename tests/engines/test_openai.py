"""OpenAIEngine against a real HTTP server on loopback that echoes the last user message."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from upstream.engines.base import GenRequest
from upstream.engines.openai import OpenAIEngine
from upstream.errors import InvalidInput, UpstreamError

# (status, headers, body): what the server answers to one attempt before it answers normally
Canned = tuple[int, dict[str, str], dict[str, Any]]


@dataclass
class FakeServer:
    """A chat-completions server: echoes `echo: <last user message>`, one char per token."""

    url: str = ""
    canned: list[Canned] = field(default_factory=list)  # consumed one per attempt, in order
    delay: float = 0.0  # seconds to sleep before answering
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, body: dict[str, Any], headers: dict[str, str]) -> Canned:
        """Record the attempt and decide the reply."""
        with self.lock:
            self.bodies.append(body)
            self.headers.append(headers)
            if self.canned:
                return self.canned.pop(0)
        prompt = body["messages"][-1]["content"]
        text = f"echo: {prompt}"
        finish = "stop"
        if len(text) > body["max_tokens"]:
            text, finish = text[: body["max_tokens"]], "length"
        return 200, {}, {
            "choices": [{"message": {"role": "assistant", "content": text},
                         "finish_reason": finish}],
            "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(text)},
        }  # fmt: skip


def _handler(server: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with server.lock:
                server.in_flight += 1
                server.max_in_flight = max(server.max_in_flight, server.in_flight)
            try:
                if self.path != "/v1/chat/completions":
                    status, headers = 404, dict[str, str]()
                    reply: dict[str, Any] = {"error": {"message": "no such path"}}
                else:
                    status, headers, reply = server.answer(body, dict(self.headers))
                # vary the latency so that replies finish out of request order
                time.sleep(server.delay + 0.01 * (len(server.bodies) % 3))
                payload = json.dumps(reply).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client timed out and hung up
            finally:
                with server.lock:
                    server.in_flight -= 1

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    httpd.daemon_threads = True
    # a short poll interval (seconds) so that shutdown at teardown is quick
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield fake
    httpd.shutdown()
    httpd.server_close()


def engine(server: FakeServer, **kwargs: Any) -> OpenAIEngine:
    kwargs = {"backoff": 0.001, "timeout": 5.0, **kwargs}
    return OpenAIEngine(server.url, "tiny-model", **kwargs)


def test_results_in_request_order_run_concurrently(server: FakeServer) -> None:
    server.delay = 0.03
    requests = [GenRequest.from_prompt(f"prompt {i}", max_new_tokens=64) for i in range(20)]
    seen: dict[int, str] = {}
    results = engine(server, concurrency=8).generate(
        requests, on_result=lambda i, result: seen.setdefault(i, result.text)
    )
    assert [r.text for r in results] == [f"echo: prompt {i}" for i in range(20)]
    assert all(r.finish_reason == "stop" for r in results)
    assert results[3].prompt_tokens == len("prompt 3")
    assert results[3].completion_tokens == len("echo: prompt 3")
    assert server.max_in_flight > 1
    assert seen == {i: r.text for i, r in enumerate(results)}  # each once, under its index
    body = server.bodies[0]
    assert body["model"] == "tiny-model"
    assert body["temperature"] == 0
    assert body["max_tokens"] == 64
    assert "stop" not in body


def test_retries_on_503_and_429_then_succeeds(server: FakeServer) -> None:
    busy: Canned = (503, {}, {"error": {"message": "overloaded"}})
    server.canned = [busy, (429, {"Retry-After": "0"}, {"error": "slow down"}), busy]
    [result] = engine(server, max_retries=4).generate([GenRequest.from_prompt("hi")])
    assert result.text == "echo: hi"
    assert len(server.bodies) == 4


def test_retry_after_is_honoured(server: FakeServer) -> None:
    server.canned = [(429, {"Retry-After": "0.3"}, {"error": "slow down"})]
    start = time.monotonic()
    [result] = engine(server, backoff=0.0).generate([GenRequest.from_prompt("hi")])
    assert time.monotonic() - start >= 0.3
    assert result.text == "echo: hi"


def test_gives_up_after_max_retries(server: FakeServer) -> None:
    server.canned = [(503, {}, {"error": {"message": "overloaded"}})] * 10
    with pytest.raises(UpstreamError, match="3 attempts") as info:
        engine(server, max_retries=2).generate([GenRequest.from_prompt("hi")])
    assert "overloaded" in str(info.value)
    assert server.url in str(info.value)
    assert len(server.bodies) == 3


def test_client_error_is_not_retried(server: FakeServer) -> None:
    server.canned = [(400, {}, {"error": {"message": "max_tokens is too large"}})]
    with pytest.raises(UpstreamError, match="max_tokens is too large") as info:
        engine(server).generate([GenRequest.from_prompt("hi")])
    assert "400" in str(info.value)
    assert len(server.bodies) == 1


def test_timeout_is_retried_then_raises(server: FakeServer) -> None:
    server.delay = 0.5
    with pytest.raises(UpstreamError, match="2 attempts; last error: timed out"):
        engine(server, timeout=0.1, max_retries=1).generate([GenRequest.from_prompt("hi")])
    assert len(server.bodies) == 2


def test_stop_strings_cut_and_length_mapped(server: FakeServer) -> None:
    stopped, cut = engine(server).generate(
        [
            GenRequest.from_prompt("one STOP two", stop=("STOP",)),
            GenRequest.from_prompt("a long prompt", max_new_tokens=5),
        ]
    )
    [stop_body] = [b for b in server.bodies if "STOP" in b["messages"][0]["content"]]
    assert stop_body["stop"] == ["STOP"]
    assert (stopped.text, stopped.finish_reason) == ("echo: one ", "stop")
    assert (cut.text, cut.finish_reason) == ("echo:", "length")


def test_authorization_header_sent_only_with_api_key(server: FakeServer) -> None:
    engine(server, api_key="sekrit").generate([GenRequest.from_prompt("hi")])
    engine(server).generate([GenRequest.from_prompt("hi")])
    with_key, without_key = server.headers
    assert with_key["Authorization"] == "Bearer sekrit"
    assert "Authorization" not in without_key


def test_malformed_reply_names_missing_field(server: FakeServer) -> None:
    server.canned = [(200, {}, {"choices": [{"finish_reason": "stop"}]})]
    with pytest.raises(UpstreamError, match=r"no choices\[0\]\.message"):
        engine(server).generate([GenRequest.from_prompt("hi")])


def test_invalid_request_refused_before_sending(server: FakeServer) -> None:
    with pytest.raises(InvalidInput, match="max_new_tokens"):
        engine(server).generate([GenRequest.from_prompt("hi", max_new_tokens=0)])
    assert server.bodies == []
    assert engine(server).name == f"openai:tiny-model@{server.url}"
