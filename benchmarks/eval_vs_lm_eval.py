"""Upstream vs lm-evaluation-harness on the same ~100 generation cases with SmolLM2.

    python -m benchmarks.eval_vs_lm_eval [--home DIR] [--n 100] [--max-new-tokens 64]

Both are started end to end as a user would start them (a fresh process each): Upstream
with `upstream eval` (its output cache cleared first, so everything is generated), and
lm-eval with `lm_eval --model hf ... --apply_chat_template` on Upstream's lm-eval export of
the same suite, at batch sizes 1 and 16. Prints wall seconds, cases/s, the ratio to
Upstream, and how many cases got the same output in both. Then 10 cases are added and
`upstream eval` run again: the cost of that re-run against a full run, both with
`upstream eval` in its own process and with the job handed to a running `upstream worker`
(as when the hub is up), whose model stays loaded between jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import delete, select

from benchmarks.prompts import instructions
from upstream.db.schema import EvalOutput
from upstream.hub import Hub
from upstream.jobs import WORKER_BEAT
from upstream.registry import import_model, materialize, resolve
from upstream.suites import CaseIn, add_cases, input_hash

MODEL = "smollm2-135m-instruct"
CHECK = {"type": "max_words", "value": 40}


def clear_outputs(hub: Hub, messages: list[list[dict[str, str]]]) -> None:
    """Forget the cached outputs of these inputs, so that the next run generates them."""
    with hub.session() as s, s.begin():
        s.execute(
            delete(EvalOutput).where(EvalOutput.input_hash.in_([input_hash(m) for m in messages]))
        )


def start_worker(hub: Hub, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`upstream worker` in the background, once it is listed as idle."""
    queued = hub.jobs.list(state="queued")
    if queued:
        raise SystemExit(
            f"{len(queued)} job(s) are queued in {hub.settings.home}; a worker would run them "
            "first and skew the timings: use a fresh --home"
        )
    proc = subprocess.Popen(
        [sys.executable, "-m", "upstream", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while hub.jobs.idle_worker() is None:
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("the worker did not start")
        time.sleep(WORKER_BEAT / 4)
    return proc


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start  # wall seconds, process start included


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=str(Path(tempfile.gettempdir()) / "upstream-bench"))
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", default="1,16")
    args = parser.parse_args()
    home = Path(args.home)
    hub = Hub.open(home)
    import_model(hub, f"bundled:{MODEL}", MODEL)
    prompts = (instructions() * 2)[: args.n]
    suite = f"bench-{args.n}-{int(time.time())}"
    cases = [
        CaseIn(
            [{"role": "user", "content": p + ("" if i < 100 else " Be brief.")}], CHECK, ["bench"]
        )
        for i, p in enumerate(prompts)
    ]
    add_cases(hub, suite, cases, MODEL, heldout_percent=0)
    with hub.session() as s:
        model_dir = materialize(hub, resolve(s, MODEL))
    env = {
        **os.environ,
        "UPSTREAM_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    upstream = [
        sys.executable,
        "-m",
        "upstream",
        "eval",
        MODEL,
        "--suite",
        suite,
        "--max-new-tokens",
        str(args.max_new_tokens),
        "--json",
    ]
    first_version = [*upstream, "--version", "1"]  # the 100 cases, also once 10 are added
    alone = {**env, "UPSTREAM_HAND_OVER_JOBS": "false"}  # in its own process

    clear_outputs(hub, [c.messages for c in cases])  # a full run: nothing cached
    ours = timed(first_version, alone)
    with hub.session() as s:
        mine = {
            o.input_hash: o.output
            for o in s.scalars(
                select(EvalOutput).where(
                    EvalOutput.input_hash.in_([input_hash(c.messages) for c in cases])
                )
            )
        }

    from upstream.exports import export_suite

    work = Path(tempfile.mkdtemp(prefix="lmeval-bench-"))
    export_dir = work / "task"
    export_suite(hub, suite, "lm-eval", export_dir, max_new_tokens=args.max_new_tokens)
    task = next(
        line.split(":", 1)[1].strip()
        for f in export_dir.glob("*.yaml")
        for line in f.read_text().splitlines()
        if line.startswith("task:")
    )
    rows = []
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        out = work / f"out-bs{bs}"
        cmd = [
            sys.executable,
            "-m",
            "lm_eval",
            "--model",
            "hf",
            "--model_args",
            f"pretrained={model_dir},dtype=float32",
            "--include_path",
            str(export_dir),
            "--tasks",
            task,
            "--apply_chat_template",
            "--batch_size",
            str(bs),
            "--output_path",
            str(out),
            "--log_samples",
            "--device",
            "cpu",
        ]
        wall = timed(cmd, env)
        samples = [
            json.loads(line)
            for f in out.rglob("samples_*.jsonl")
            for line in f.read_text().splitlines()
            if line.strip()
        ]
        same = 0
        for smp in samples:
            prompt = smp["doc"].get("prompt") or smp["doc"]["messages"][-1]["content"]
            resp = smp["resps"][0][0] if isinstance(smp["resps"][0], list) else smp["resps"][0]
            key = input_hash([{"role": "user", "content": prompt}])
            same += mine.get(key) is not None and mine[key].strip() == resp.strip()
        rows.append((f"lm-eval, batch {bs}", wall, same))

    added = [
        CaseIn([{"role": "user", "content": f"Name a colour number {i}."}], CHECK, ["bench"])
        for i in range(10)
    ]
    add_cases(hub, suite, added)
    clear_outputs(hub, [c.messages for c in added])  # from an earlier run of this script
    rerun = timed(upstream, alone)

    worker = start_worker(hub, env)
    try:
        clear_outputs(hub, [c.messages for c in cases])
        worker_first = timed(first_version, env)  # the worker loads the model
        clear_outputs(hub, [c.messages for c in cases])
        worker_full = timed(first_version, env)
        clear_outputs(hub, [c.messages for c in added])
        worker_rerun = timed(upstream, env)
    finally:
        worker.terminate()
        worker.wait(timeout=30)

    print(
        f"\n{args.n} generation cases, SmolLM2-135M-Instruct fp32 greedy, "
        f"max_new_tokens={args.max_new_tokens}; {platform.machine()}, {os.cpu_count()} CPUs\n"
    )
    print(f"{'run':<22}{'wall s':>9}{'cases/s':>9}{'vs Upstream':>13}{'same output':>13}")
    print(f"{'Upstream':<22}{ours:>9.1f}{args.n / ours:>9.2f}{1.0:>12.2f}x{'-':>13}")
    for name, wall, same in rows:
        print(f"{name:<22}{wall:>9.1f}{args.n / wall:>9.2f}{wall / ours:>12.2f}x{same:>9}/{args.n}")
    print(
        f"\nre-run after adding 10 cases (only they are generated) against a full run of {args.n}:"
    )
    print(f"{'upstream eval':<44}{'full s':>8}{'re-run s':>10}{'share':>8}")
    for name, full, again in [
        ("in its own process, no hub running", ours, rerun),
        ("handed to a running worker, model loaded", worker_full, worker_rerun),
        ("re-run on the worker; first run alone", ours, worker_rerun),
    ]:
        print(f"{name:<44}{full:>8.1f}{again:>10.1f}{again / full:>8.0%}")
    print(f"(the worker's first full run, loading the model: {worker_first:.1f} s)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
