"""Upstream vs lm-evaluation-harness on the same ~100 generation cases with SmolLM2.

    python -m benchmarks.eval_vs_lm_eval [--home DIR] [--n 100] [--max-new-tokens 64]

Both are started end to end as a user would start them (a fresh process each): Upstream
with `upstream eval` (its output cache cleared first, so everything is generated), and
lm-eval with `lm_eval --model hf ... --apply_chat_template` on Upstream's lm-eval export of
the same suite, at batch sizes 1 and 16. Prints wall seconds, cases/s, the ratio to
Upstream, and how many cases got the same output in both. Then 10 cases are added and
`upstream eval` run again: the cost of that re-run against a full run.
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
from upstream.registry import import_model, materialize, resolve
from upstream.suites import CaseIn, add_cases, input_hash

MODEL = "smollm2-135m-instruct"
CHECK = {"type": "max_words", "value": 40}


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

    with hub.session() as s, s.begin():  # a full run: nothing cached for these inputs
        s.execute(
            delete(EvalOutput).where(
                EvalOutput.input_hash.in_([input_hash(c.messages) for c in cases])
            )
        )
    ours = timed(upstream, env)
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

    add_cases(
        hub,
        suite,
        [
            CaseIn([{"role": "user", "content": f"Name a colour number {i}."}], CHECK, ["bench"])
            for i in range(10)
        ],
    )
    rerun = timed(upstream, env)

    print(
        f"\n{args.n} generation cases, SmolLM2-135M-Instruct fp32 greedy, "
        f"max_new_tokens={args.max_new_tokens}; {platform.machine()}, {os.cpu_count()} CPUs\n"
    )
    print(f"{'run':<22}{'wall s':>9}{'cases/s':>9}{'vs Upstream':>13}{'same output':>13}")
    print(f"{'Upstream':<22}{ours:>9.1f}{args.n / ours:>9.2f}{1.0:>12.2f}x{'-':>13}")
    for name, wall, same in rows:
        print(f"{name:<22}{wall:>9.1f}{args.n / wall:>9.2f}{wall / ours:>12.2f}x{same:>9}/{args.n}")
    print(f"\nre-run after adding 10 cases: {rerun:.1f} s = {rerun / ours:.0%} of a full run")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
