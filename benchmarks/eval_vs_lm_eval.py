"""Upstream vs lm-evaluation-harness on two suites of 100 generation cases with SmolLM2.

    python -m benchmarks.eval_vs_lm_eval [--home DIR] [--suites short,format] [--no-rerun]

Two suites: `short`, 100 short varied instructions (`max_words 40`, 64 new tokens at
most), and `format`, 100 questions asking for one word, a number or yes/no with their
`exact` checks (128 new tokens at most), which the base model answers at length, as the
reports of ignored formats are. Each tool is started end to end as a user would start it
(a fresh process each, nothing cached): Upstream with `upstream eval` (answers stop once
their verdict is certain) and `upstream eval --full-outputs`, and lm-eval with `lm_eval
--model hf ... --apply_chat_template` on Upstream's lm-eval export of the same suite, at
batch sizes 1 and 16. Prints per suite: wall seconds, the time against Upstream, tokens
generated, how many outputs equal Upstream's full outputs, and how many verdicts equal
Upstream's (lm-eval's outputs scored with the same checks). Then, unless `--no-rerun`,
10 cases are added to the short suite and `upstream eval` run again: the cost of that
re-run against a full run, in its own process and handed to a running `upstream worker`
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
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, select

from benchmarks.prompts import format_questions, instructions
from upstream.accounts import owner
from upstream.checks import parse_check
from upstream.db.schema import Case, EvalOutput, EvalResult
from upstream.hub import Hub
from upstream.jobs import WORKER_BEAT
from upstream.registry import import_model, materialize, resolve
from upstream.suites import CaseIn, add_cases, input_hash

MODEL = "smollm2-135m-instruct"
SHORT_CHECK = {"type": "max_words", "value": 40}


@dataclass
class SuiteSpec:
    name: str
    cases: list[CaseIn]
    max_new_tokens: int


def short_suite() -> SuiteSpec:
    prompts = instructions()[:100]
    return SuiteSpec(
        "short",
        [CaseIn([{"role": "user", "content": p}], SHORT_CHECK, ["short"]) for p in prompts],
        64,
    )


def format_suite() -> SuiteSpec:
    return SuiteSpec(
        "format",
        [
            CaseIn([{"role": "user", "content": p}], check, ["format"])
            for p, check in format_questions(100)
        ],
        128,
    )


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


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - start, out.stdout  # wall seconds, process start included


@dataclass
class Row:
    name: str
    wall: float
    tokens: int
    same_output: int | None  # of the cases: output equal to Upstream's full output
    same_verdict: int | None  # of the cases: verdict equal to Upstream's (stopped) run's


def verdicts(hub: Hub, run: int) -> dict[str, bool]:
    """Input hash -> passed, of an eval run."""
    with hub.session() as s:
        rows = s.execute(
            select(Case.input_hash, EvalResult.passed)
            .join(Case, Case.id == EvalResult.case_id)
            .where(EvalResult.run_id == run)
        )
        return {h: bool(p) for h, p in rows}


def outputs(hub: Hub, cases: list[CaseIn]) -> dict[str, str]:
    with hub.session() as s:
        found = s.scalars(
            select(EvalOutput).where(
                EvalOutput.input_hash.in_([input_hash(c.messages) for c in cases])
            )
        )
        return {o.input_hash: o.output for o in found}


def run_lm_eval(
    hub: Hub,
    suite: str,
    spec: SuiteSpec,
    model_dir: Path,
    batch_size: int,
    env: dict[str, str],
    work: Path,
) -> tuple[float, list[tuple[str, str]]]:
    """lm-eval on the suite's export: wall seconds and (input hash, response) per case."""
    from upstream.exports import export_suite

    export_dir = work / f"task-{spec.name}"
    if not export_dir.exists():
        export_suite(
            hub, owner(hub), suite, "lm-eval", export_dir, max_new_tokens=spec.max_new_tokens
        )
    task = next(
        line.split(":", 1)[1].strip()
        for f in export_dir.glob("*.yaml")
        for line in f.read_text().splitlines()
        if line.startswith("task:")
    )
    out = work / f"out-{spec.name}-bs{batch_size}"
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
        str(batch_size),
        "--output_path",
        str(out),
        "--log_samples",
        "--device",
        "cpu",
    ]
    wall, _ = timed(cmd, env)
    answers = []
    for f in out.rglob("samples_*.jsonl"):
        for line in f.read_text().splitlines():
            if line.strip():
                smp = json.loads(line)
                prompt = smp["doc"].get("prompt") or smp["doc"]["messages"][-1]["content"]
                resp = smp["resps"][0]
                resp = resp[0] if isinstance(resp, list) else resp
                answers.append((input_hash([{"role": "user", "content": prompt}]), resp))
    return wall, answers


def compare_suite(
    hub: Hub,
    spec: SuiteSpec,
    model_dir: Path,
    batch_sizes: list[int],
    env: dict[str, str],
    work: Path,
) -> tuple[str, list[Row]]:
    suite = f"bench-{spec.name}-{int(time.time())}"
    add_cases(hub, suite, spec.cases, MODEL, heldout_percent=0)
    alone = {**env, "UPSTREAM_HAND_OVER_JOBS": "false"}  # in its own process
    cmd = [
        sys.executable,
        "-m",
        "upstream",
        "eval",
        MODEL,
        "--suite",
        suite,
        "--version",
        "1",
        "--max-new-tokens",
        str(spec.max_new_tokens),
        "--json",
    ]
    messages = [c.messages for c in spec.cases]
    clear_outputs(hub, messages)  # nothing cached: everything is generated
    early_wall, early_out = timed(cmd, alone)
    early = json.loads(early_out)
    ours = verdicts(hub, early["run"])
    prefixes = outputs(hub, spec.cases)
    clear_outputs(hub, messages)
    full_wall, full_out = timed([*cmd, "--full-outputs"], alone)
    full = json.loads(full_out)
    whole = outputs(hub, spec.cases)
    full_verdicts = verdicts(hub, full["run"])
    n = len(spec.cases)
    assert all(whole[h].startswith(p) for h, p in prefixes.items()), "a prefix is not a start"
    rows = [
        Row("Upstream", early_wall, early["metrics"]["outputs"]["tokens"], None, None),
        Row(
            "Upstream --full-outputs",
            full_wall,
            full["metrics"]["outputs"]["tokens"],
            n,
            sum(full_verdicts[h] == v for h, v in ours.items()),
        ),
    ]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    checks = {input_hash(c.messages): parse_check(c.expected) for c in spec.cases}
    for bs in batch_sizes:
        wall, answers = run_lm_eval(hub, suite, spec, model_dir, bs, env, work)
        tokens = sum(len(tok(resp, add_special_tokens=False)["input_ids"]) for _, resp in answers)
        rows.append(
            Row(
                f"lm-eval, batch {bs}",
                wall,
                tokens,
                sum(whole.get(h, "").strip() == r.strip() for h, r in answers),
                sum(checks[h].score(r).passed == ours[h] for h, r in answers),
            )
        )
    stopped = early["metrics"]["outputs"]["stopped_at_verdict"]
    title = (
        f"suite {spec.name}: {n} cases, max_new_tokens={spec.max_new_tokens}, "
        f"pass rate {early['metrics']['all']['rate']:.0%}; "
        f"{stopped} of {n} answers stopped at their verdict"
    )
    return title, rows


def print_rows(title: str, rows: list[Row], n: int) -> None:
    ours = rows[0].wall
    print(f"\n{title}\n")
    print(
        f"{'run':<26}{'wall s':>8}{'cases/s':>9}{'vs Upstream':>13}{'tokens':>8}"
        f"{'same output':>13}{'same verdict':>14}"
    )
    for r in rows:
        same = "-" if r.same_output is None else f"{r.same_output}/{n}"
        verdict = "-" if r.same_verdict is None else f"{r.same_verdict}/{n}"
        print(
            f"{r.name:<26}{r.wall:>8.1f}{n / r.wall:>9.2f}{r.wall / ours:>12.2f}x"
            f"{r.tokens:>8}{same:>13}{verdict:>14}"
        )


def rerun_table(hub: Hub, env: dict[str, str]) -> None:
    """Add 10 cases to a short suite: a re-run's cost against a full run."""
    spec = short_suite()
    suite = f"bench-rerun-{int(time.time())}"
    add_cases(hub, suite, spec.cases, MODEL, heldout_percent=0)
    alone = {**env, "UPSTREAM_HAND_OVER_JOBS": "false"}
    upstream = [sys.executable, "-m", "upstream", "eval", MODEL, "--suite", suite]
    upstream += ["--max-new-tokens", str(spec.max_new_tokens), "--json"]
    first_version = [*upstream, "--version", "1"]  # the 100 cases, also once 10 are added
    messages = [c.messages for c in spec.cases]
    clear_outputs(hub, messages)
    ours, _ = timed(first_version, alone)
    added = [
        CaseIn([{"role": "user", "content": f"Name a colour number {i}."}], SHORT_CHECK, ["b"])
        for i in range(10)
    ]
    add_cases(hub, suite, added)
    clear_outputs(hub, [c.messages for c in added])  # from an earlier run of this script
    rerun, _ = timed(upstream, alone)
    worker = start_worker(hub, env)
    try:
        clear_outputs(hub, messages)
        worker_first, _ = timed(first_version, env)  # the worker loads the model
        clear_outputs(hub, messages)
        worker_full, _ = timed(first_version, env)
        clear_outputs(hub, [c.messages for c in added])
        worker_rerun, _ = timed(upstream, env)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    print("\nre-run after adding 10 cases (only they are generated) against a full run of 100:")
    print(f"{'upstream eval':<44}{'full s':>8}{'re-run s':>10}{'share':>8}")
    for name, full, again in [
        ("in its own process, no hub running", ours, rerun),
        ("handed to a running worker, model loaded", worker_full, worker_rerun),
        ("re-run on the worker; first run alone", ours, worker_rerun),
    ]:
        print(f"{name:<44}{full:>8.1f}{again:>10.1f}{again / full:>8.0%}")
    print(f"(the worker's first full run, loading the model: {worker_first:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default=str(Path(tempfile.gettempdir()) / "upstream-bench"))
    parser.add_argument("--suites", default="short,format", help="short, format or both")
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--no-rerun", action="store_true", help="skip the re-run table")
    args = parser.parse_args()
    home = Path(args.home)
    hub = Hub.open(home)
    import_model(hub, f"bundled:{MODEL}", MODEL)
    with hub.session() as s:
        model_dir = materialize(hub, resolve(s, MODEL))
    env = {
        **os.environ,
        "UPSTREAM_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    makers = {"short": short_suite, "format": format_suite}
    work = Path(tempfile.mkdtemp(prefix="lmeval-bench-"))
    print(
        f"SmolLM2-135M-Instruct fp32 greedy; {platform.machine()}, {os.cpu_count()} CPUs; "
        "tokens: Upstream's generated tokens, lm-eval's responses re-tokenized"
    )
    try:
        for name in args.suites.split(","):
            spec = makers[name]()
            title, rows = compare_suite(hub, spec, model_dir, batch_sizes, env, work)
            print_rows(title, rows, len(spec.cases))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not args.no_rerun:
        rerun_table(hub, env)


if __name__ == "__main__":
    main()
