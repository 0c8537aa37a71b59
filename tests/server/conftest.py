"""A real uvicorn server on a free loopback port, for HTTP tests."""

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn

from upstream.hub import Hub
from upstream.server.app import create_app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(hub: Hub, worker: bool = False) -> Iterator[str]:
    """The hub's app over real HTTP on loopback; with `worker`, queued jobs run too."""
    port = free_port()
    config = uvicorn.Config(
        create_app(hub, worker=worker), host="127.0.0.1", port=port, log_level="warning"
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def server(tiny_hub: Hub) -> Iterator[str]:
    with serve(tiny_hub, worker=True) as url:
        yield url


def wait_job(server: str, job_id: int, timeout: float = 60) -> dict:
    """Poll /api/jobs/{id} until the job is done or failed."""
    import httpx

    deadline = time.monotonic() + timeout
    while (job := httpx.get(f"{server}/api/jobs/{job_id}").json())["state"] not in (
        "done",
        "failed",
    ):
        assert time.monotonic() < deadline, f"job {job_id} still {job['state']}"
        time.sleep(0.1)
    return job


@contextmanager
def upstream_up(home: Path, log_path: Path, *options: str) -> Iterator[str]:
    """`upstream up --no-import` on `home` in its own process (write rate limit off), its
    output in `log_path`; yields the base URL once /health answers."""
    import os
    import subprocess
    import sys

    import httpx

    port = free_port()
    env = {**os.environ, "UPSTREAM_HOME": str(home), "UPSTREAM_WRITE_RATE_PER_MINUTE": "0"}
    command = [sys.executable, "-m", "upstream", "up", "--no-import", "--port", str(port)]
    with log_path.open("w") as log:  # a pipe nobody reads would fill and stall it
        server = subprocess.Popen(
            [*command, *options], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert server.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)
            yield base
        finally:
            server.terminate()
            server.wait(timeout=30)
