"""Serving SmolLM2 to 16 concurrent clients: Upstream's /v1 against one-by-one serving
and `transformers serve` (continuous batching on), side by side on this machine.

    python -m benchmarks.serving [--home DIR] [--clients 16] [--n 100] [--max-tokens 96]
                                 [--one-by-one N] [--skip-transformers]

100 chat requests of mixed length (questions, haiku, one-sentence explanations,
arithmetic; answers from one word to the token limit), greedy, sent by `--clients`
threads from one queue (each takes the next request when its previous answer is in).
Each server runs alone, after a warm-up request that loads its model:

- Upstream: `upstream up --no-worker`, the official `openai` client with a token;
- one by one: the same server with `serve_batch_size = 1` (one request decodes at a
  time, the others wait), on the first `--one-by-one` requests;
- `transformers serve DIR --continuous-batching` (float32, CPU, offline), the library's
  own OpenAI-compatible server, with `temperature: 0`.

Prints requests/s, tokens/s and p50/p99 latency per server, how many answers are
identical to Upstream's, and the overhead of /v1 over calling the engine in-process for
one request alone. Then, in-process, where a batched run's time goes: the same requests
through the batcher without HTTP, and the decoding steps it took.
"""

from __future__ import annotations

import argparse
import os
import platform
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.prompts import instructions
from benchmarks.reports import free_port
from upstream import accounts
from upstream.engines.base import GenRequest
from upstream.hub import Hub
from upstream.registry import import_model, list_models, materialize, resolve
from upstream.threads import in_fresh_thread

MODEL = "smollm2-135m-instruct"


@dataclass
class Run:
    name: str
    wall: float = 0.0  # seconds
    latencies: list[float] = field(default_factory=list)  # seconds, per request
    texts: list[str] = field(default_factory=list)
    tokens: int = 0

    def row(self, reference: list[str] | None) -> str:
        n = len(self.latencies)
        lat = sorted(self.latencies)
        p99 = lat[min(n - 1, round(0.99 * (n - 1)))]
        same = "–"
        if reference is not None:
            same = f"{sum(a == b for a, b in zip(self.texts, reference, strict=False))}/{n}"
        return (
            f"| {self.name} | {n} | {self.wall:.1f} | {n / self.wall:.2f} | "
            f"{self.tokens / self.wall:.1f} | {statistics.median(lat):.2f} | {p99:.2f} | {same} |"
        )


def requests_of(n: int) -> list[list[dict[str, str]]]:
    prompts = instructions()
    return [[{"role": "user", "content": prompts[i % len(prompts)]}] for i in range(n)]


def prepared_home(home: Path) -> tuple[str, Path]:
    """The hub (made once: the bundled model imported); (an owner token, the revision dir)."""
    hub = Hub.open(home, write_rate_per_minute=0)
    try:
        with hub.session() as s:
            known = [m.name for m in list_models(s)]
        if MODEL not in known:
            in_fresh_thread(import_model, hub, "bundled:smollm2-135m-instruct", MODEL)
        owner = accounts.owner(hub)
        token = accounts.create_token(hub, owner, owner.name)["token"]
        with hub.session() as s:
            revision = resolve(s, MODEL)
        return str(token), materialize(hub, revision)
    finally:
        hub.close()


def start(cmd: list[str], env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    server = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if server.poll() is not None:
            break
        time.sleep(0.2)
    server.terminate()
    raise SystemExit(f"{cmd[0:3]} did not start; see {log}")


def stop(server: subprocess.Popen[bytes]) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()


def drive(
    name: str,
    ask: Callable[[list[dict[str, str]]], tuple[str, int]],
    convs: list[list[dict[str, str]]],
    clients: int,
) -> Run:
    """Send `convs` from `clients` threads; `ask` returns (text, completion tokens)."""
    run = Run(name, texts=[""] * len(convs), latencies=[0.0] * len(convs))
    todo: queue.Queue[int] = queue.Queue()
    for i in range(len(convs)):
        todo.put(i)
    lock = threading.Lock()
    errors: list[BaseException] = []

    def client() -> None:
        while True:
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return
            t = time.perf_counter()
            try:
                text, tokens = ask(convs[i])
            except BaseException as e:
                errors.append(e)
                return
            run.latencies[i] = time.perf_counter() - t
            run.texts[i] = text
            with lock:
                run.tokens += tokens

    start_t = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    run.wall = time.perf_counter() - start_t
    if errors:
        raise errors[0]
    return run


def openai_asker(base: str, key: str, model: str, max_tokens: int) -> Callable[..., Any]:
    import openai

    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=900)

    def ask(messages: list[dict[str, str]]) -> tuple[str, int]:
        done = client.chat.completions.create(
            model=model,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=max_tokens,
            temperature=0,
        )
        usage = done.usage.completion_tokens if done.usage else 0
        return done.choices[0].message.content or "", usage

    return ask


def bench_upstream(
    home: Path, token: str, convs: list[Any], clients: int, max_tokens: int, batch: int, name: str
) -> tuple[Run, list[float]]:
    port = free_port()
    env = {
        **os.environ,
        "UPSTREAM_HOME": str(home),
        "UPSTREAM_WRITE_RATE_PER_MINUTE": "0",
        "UPSTREAM_SERVE_BATCH_SIZE": str(batch),
        "UPSTREAM_SERVE_MAX_WAITING": "1000",
    }
    cmd = [sys.executable, "-m", "upstream", "up", "--no-import", "--no-worker"]
    log = home.parent / f"upstream-batch-{batch}.log"
    server = start([*cmd, "--port", str(port)], env, port, log)
    try:
        ask = openai_asker(f"http://127.0.0.1:{port}", token, MODEL, max_tokens)
        ask(convs[0])  # warm-up: loads the model
        short = openai_asker(f"http://127.0.0.1:{port}", token, MODEL, 32)
        single = []
        for _ in range(9):  # one request alone, for the overhead over the engine
            t = time.perf_counter()
            short(convs[0])
            single.append(time.perf_counter() - t)
        return drive(name, ask, convs, clients), single
    finally:
        stop(server)


def bench_transformers(
    model_dir: Path, convs: list[Any], clients: int, max_tokens: int, log: Path
) -> Run:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    exe = str(Path(sys.executable).with_name("transformers"))
    cmd = [exe, "serve", str(model_dir), "--continuous-batching", "--cb-num-blocks", "64"]
    cmd += ["--device", "cpu", "--dtype", "float32", "--host", "127.0.0.1", "--port", str(port)]
    server = start(cmd, env, port, log)
    try:
        ask = openai_asker(f"http://127.0.0.1:{port}", "none", str(model_dir), max_tokens)
        ask(convs[0])
        return drive("`transformers serve --continuous-batching`", ask, convs, clients)
    finally:
        stop(server)


def engine_alone(home: Path, conv: list[dict[str, str]]) -> list[float]:
    """Seconds for one 32-token request through the engine in-process (model loaded)."""
    from upstream.engines.hf import HFEngine

    hub = Hub.open(home)
    try:
        with hub.session() as s:
            revision = resolve(s, MODEL)
        engine = HFEngine.for_revision(hub, revision)
        request = GenRequest(messages=conv, max_new_tokens=32)
        engine.generate([request])
        times = []
        for _ in range(9):
            t = time.perf_counter()
            engine.generate([request])
            times.append(time.perf_counter() - t)
        return times
    finally:
        hub.close()


def batcher_alone(home: Path, convs: list[Any], clients: int, max_tokens: int) -> tuple[Run, Any]:
    """The same requests through the batcher in-process: no HTTP, no traces."""
    from upstream.engines import fastgen
    from upstream.engines.hf import load_model
    from upstream.engines.serving import Batcher

    hub = Hub.open(home)
    counts = {"steps": 0, "row_steps": 0, "prefills": 0, "prefill_rows": 0}
    step, prefill = fastgen._Decoder._step, fastgen._Decoder._prefill

    def counted_step(self: Any, rows: Any) -> Any:
        counts["steps"] += 1
        counts["row_steps"] += len(rows.prompts)
        return step(self, rows)

    def counted_prefill(self: Any, group: list[int]) -> Any:
        counts["prefills"] += 1
        counts["prefill_rows"] += len(group)
        return prefill(self, group)

    try:
        with hub.session() as s:
            revision = resolve(s, MODEL)
        # loaded in a thread that ends, as the server does (upstream.threads)
        batcher = Batcher(in_fresh_thread(load_model, hub, revision), 32, 1000)

        def ask(messages: list[dict[str, str]]) -> tuple[str, int]:
            r = batcher.submit(GenRequest(messages=messages, max_new_tokens=max_tokens))
            result = r.result.result()
            return result.text, result.completion_tokens

        ask(convs[0])
        short = []
        for _ in range(9):  # one 32-token request alone, the same loop as /v1 without HTTP
            t = time.perf_counter()
            batcher.submit(GenRequest(messages=convs[0], max_new_tokens=32)).result.result()
            short.append(time.perf_counter() - t)
        counts["single"] = statistics.median(short)  # type: ignore[assignment]
        fastgen._Decoder._step = counted_step  # type: ignore[method-assign]
        fastgen._Decoder._prefill = counted_prefill  # type: ignore[method-assign]
        try:
            run = drive("batcher in-process (no HTTP)", ask, convs, clients)
        finally:
            fastgen._Decoder._step = step  # type: ignore[method-assign]
            fastgen._Decoder._prefill = prefill  # type: ignore[method-assign]
        batcher.stop()
        return run, counts
    finally:
        hub.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--one-by-one", type=int, default=100, help="requests (0: skip)")
    parser.add_argument("--skip-transformers", action="store_true")
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="upstream-serving-")) / "home"
    token, model_dir = prepared_home(home)
    convs = requests_of(args.n)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; {args.n} requests, "
          f"{args.clients} clients, max_tokens {args.max_tokens}, greedy")  # fmt: skip

    ours, single = bench_upstream(
        home, token, convs, args.clients, args.max_tokens, 32, "Upstream /v1 (batched)"
    )
    runs = [ours]
    if args.one_by_one:
        alone_run, _ = bench_upstream(
            home,
            token,
            convs[: args.one_by_one],
            args.clients,
            args.max_tokens,
            1,
            "one by one (serve_batch_size 1)",
        )
        runs.append(alone_run)
    theirs = None
    if not args.skip_transformers:
        theirs = bench_transformers(
            model_dir, convs, args.clients, args.max_tokens, home.parent / "tserve.log"
        )
        runs.append(theirs)
    direct, counts = batcher_alone(home, convs, args.clients, args.max_tokens)
    runs.append(direct)
    engine = in_fresh_thread(engine_alone, home, convs[0])  # a thread of its own, as the batcher

    print()
    print("| server | requests | wall s | requests/s | tokens/s | p50 s | p99 s | same |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        print(r.row(None if r is ours else ours.texts[: len(r.texts)]))
    if theirs is not None:
        tokens = (ours.tokens / ours.wall) / (theirs.tokens / theirs.wall)
        asked = (len(ours.latencies) / ours.wall) / (len(theirs.latencies) / theirs.wall)
        print(f"\nvs transformers serve: {tokens:.2f}x tokens/s, {asked:.2f}x requests/s")
    v1, alone = statistics.median(single) * 1000, statistics.median(engine) * 1000
    loop = float(counts["single"]) * 1000
    print(f"one 32-token request alone: /v1 {v1:.0f} ms, the batcher in-process {loop:.0f} ms,")
    print(f"  HFEngine.generate in-process {alone:.0f} ms: /v1 adds {v1 - loop:.0f} ms over the")
    print("  same loop (HTTP, JSON, the token, the trace, the feedback token)")
    steps = max(1, counts["steps"])
    rows = counts["row_steps"] / steps
    per_prefill = counts["prefill_rows"] / max(1, counts["prefills"])
    print(f"batcher: {counts['steps']} decoding steps of {rows:.1f} rows on average; "
          f"{counts['prefills']} prefills of {per_prefill:.1f} prompts; "
          f"{direct.wall / steps * 1000:.0f} ms a step, prefills included")  # fmt: skip


if __name__ == "__main__":
    main()
