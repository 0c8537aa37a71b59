"""Evaluation runs: a subject (revision + adapters) measured on a suite version.

Outputs are cached by (subject hash, input hash, generation settings hash). The subject
hash covers the revision, the tokenizer and chat template files, every adapter's files and
the engine version, so a cached output is reused only when generating again would give
the same text. Re-running after cases were added generates only the new inputs;
re-scoring after a check changed generates nothing; a run killed half-way resumes from
the outputs already written (they are committed a few at a time as they finish).

A case that cannot be generated or scored is recorded as an error with its message and
counts as not passed; it never aborts the run.

Generation stops as soon as every check that will read an output has its verdict
(`checks.decided`): after "A spider has" the check `exact "8"` has failed, and decoding
the rest of the answer would change nothing. Such an output is stored as the prefix it
is, marked `stopped`; it is reused only by checks it decides, and any other reader gets
the full output generated (and cached, replacing the prefix). `full_outputs=True` asks
for full outputs from the start, for people who read them.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from upstream.access import Actor, require
from upstream.blobs import sha256_file
from upstream.checks import Check, decided, lenient, parse_check
from upstream.db.schema import (
    Case,
    EvalOutput,
    EvalResult,
    EvalRun,
    Revision,
    Suite,
    SuiteVersion,
    utcnow,
)
from upstream.embeddings import embed  # loads its model only when a check needs it
from upstream.engines.base import DEFAULT_MAX_NEW_TOKENS, GenRequest, check_max_new_tokens
from upstream.engines.hf import ENGINE_VERSION, engine_version
from upstream.errors import Conflict, InvalidInput, NotFound
from upstream.registry import resolve
from upstream.shapes import Shape
from upstream.stats import wilson
from upstream.suites import (
    SPLITS,
    case_split,
    get_version,
    input_hash,
    may_see_heldout,
    split_secret,
    version_cases,
    withheld_cases,
)

if TYPE_CHECKING:
    from upstream.hub import Hub
    from upstream.jobs import JobContext

STORE_EVERY = 16  # finished outputs committed together: what a killed run keeps
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "generation_config.json",
)
Progress = Callable[[float, float, str], None]


def subject_of(
    revision: Revision, adapters: Sequence[Path] = (), engine: str | None = None
) -> tuple[dict[str, Any], str]:
    """What a result depends on, and its hash; `engine` defaults to the engine's version
    (`engines.hf.engine_version` adds the hub's precision)."""

    files = revision.manifest["files"]
    adapter_info = []
    for a in adapters:
        a = Path(a)
        if not a.is_dir():
            raise NotFound(f"adapter {a}: no such directory")
        digest = hashlib.sha256()
        for f in sorted(a.iterdir()):
            if f.is_file():
                digest.update(f.name.encode() + sha256_file(f).encode())
        adapter_info.append({"path": str(a), "sha256": digest.hexdigest()})
    subject = {
        "revision": revision.hash,
        "tokenizer": {f: files[f]["sha256"] for f in TOKENIZER_FILES if f in files},
        "adapters": adapter_info,
        "engine": engine or ENGINE_VERSION,
    }
    # an adapter's path does not change what it generates; its content does
    hashed = {**subject, "adapters": [x["sha256"] for x in adapter_info]}
    canonical = json.dumps(hashed, sort_keys=True)
    return subject, hashlib.sha256(canonical.encode()).hexdigest()


def settings_of(max_new_tokens: int) -> tuple[dict[str, Any], str]:
    settings = json.loads(
        GenRequest(
            messages=[{"role": "user", "content": "x"}], max_new_tokens=max_new_tokens
        ).settings_key()
    )
    return settings, hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def answers(
    hub: Hub, revision: Revision, prompts: Sequence[str], max_new_tokens: int
) -> list[tuple[str, int]]:
    """The revision's full greedy answers to single-turn prompts, with their token counts,
    through the output cache: a prompt answered before (by any run with these settings)
    is not generated again. For the hub's own prompts (training's replay); an answer the
    engine cannot give raises."""
    _, subject_hash = subject_of(revision, (), engine_version(hub))
    _, settings_hash = settings_of(max_new_tokens)
    keys = [input_hash([{"role": "user", "content": p}]) for p in prompts]
    with hub.session() as s:
        have = {
            k: (o.output, o.completion_tokens)
            for k, o in _cached(s, keys, subject_hash, settings_hash).items()
            if usable(o, None)
        }
    todo = sorted({k: p for k, p in zip(keys, prompts, strict=True) if k not in have}.items())
    if todo:
        from upstream.engines.hf import HFEngine

        engine = HFEngine.for_revision(hub, revision)  # the model the evaluations use next
        results = engine.generate(
            [GenRequest.from_prompt(p, max_new_tokens=max_new_tokens) for _, p in todo]
        )
        rows = [
            EvalOutput(
                subject_hash=subject_hash,
                input_hash=k,
                settings_hash=settings_hash,
                output=r.text,
                error="",  # set, not left to defaults: a merge onto a stopped or failed
                completion_tokens=r.completion_tokens,
                stopped=False,  # row for the same key keeps the columns it is not given
            )
            for (k, _), r in zip(todo, results, strict=True)
        ]
        _store_outputs(hub, rows)
        have.update({row.input_hash: (row.output, row.completion_tokens) for row in rows})
    return [have[k] for k in keys]


def run_eval(
    hub: Hub,
    ref: str,
    suite: str,
    version: int | None = None,
    split: str = "all",
    adapters: Sequence[Path] = (),
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    progress: Progress | None = None,
    full_outputs: bool = False,
    answers: bool = False,
) -> dict[str, Any]:
    """Evaluate `ref` (+ adapters) on a suite version; returns the run's summary.

    Outputs stop at their cases' verdicts unless `full_outputs`; `answers` makes them go
    on until the lenient parts of the checks (does the output state the answer?) are
    decided too, for comparisons, which read both.
    """

    if split not in SPLITS:
        raise InvalidInput(f"split {split!r}: allowed {', '.join(SPLITS)}")
    with hub.session() as s:
        revision = resolve(s, ref)
        v = get_version(s, suite, version)
        heldout_percent, secret = _heldout_percent(s, v.suite_id), split_secret(s)
        cases = [
            c
            for c in version_cases(s, v)
            if split == "all" or case_split(c, heldout_percent, secret) == split
        ]
        if not cases:
            raise InvalidInput(f"suite {suite} v{v.number} has no {split} cases")
        subject, subject_hash = subject_of(revision, adapters, engine_version(hub))
        settings, settings_hash = settings_of(max_new_tokens)
        run = EvalRun(
            suite_version_id=v.id,
            revision_id=revision.id,
            subject=subject,
            subject_hash=subject_hash,
            settings=settings,
            split=split,
        )
        model_name, version_number = revision.model.name, v.number
        s.add(run)
        s.commit()
        run_id = run.id
    wanted = {} if full_outputs else verdict_checks(cases, answers)
    missing = _missing_inputs(hub, cases, subject_hash, settings_hash, wanted, full_outputs)
    generated = 0
    if missing:
        try:
            generated = _generate(
                hub,
                revision,
                adapters,
                missing,
                subject_hash,
                settings_hash,
                max_new_tokens,
                progress,
                wanted,
            )
        except BaseException:  # the outputs written so far stay cached for the next run
            with hub.session() as s, s.begin():
                failed = s.get(EvalRun, run_id)
                if failed is not None:
                    failed.state, failed.finished_at = "failed", utcnow()
            raise
    with hub.session() as s, s.begin():
        outputs = _cached(s, [c.input_hash for c in cases], subject_hash, settings_hash)
        stored = s.get(EvalRun, run_id)
        assert stored is not None
        run = stored
        rows = [
            _score(run_id, c, case_split(c, heldout_percent, secret), outputs.get(c.input_hash))
            for c in cases
        ]
        s.add_all(rows)
        run.metrics = {
            **metrics(rows, {c.id: c.tags for c in cases}),
            "outputs": output_counts(outputs.values()),
        }
        run.generated = generated
        run.state = "done"
        run.finished_at = utcnow()
        summary = run_summary(run, model_name, suite, version_number)
    return summary


def _heldout_percent(session: Any, suite_id: int) -> int:

    suite = session.get(Suite, suite_id)
    return int(suite.heldout_percent) if suite else 30


def _cached(
    session: Any, input_hashes: Sequence[str], subject_hash: str, settings_hash: str
) -> dict[str, EvalOutput]:
    found: dict[str, EvalOutput] = {}
    unique = sorted(set(input_hashes))
    for start in range(0, len(unique), 500):
        q = select(EvalOutput).where(
            EvalOutput.subject_hash == subject_hash,
            EvalOutput.settings_hash == settings_hash,
            EvalOutput.input_hash.in_(unique[start : start + 500]),
        )
        for o in session.scalars(q):
            found[o.input_hash] = o
    return found


def verdict_checks(cases: Sequence[Case], answers: bool = False) -> dict[str, list[Check]]:
    """Input hash -> the checks whose verdicts end its generation: those of every case
    with that input (and, with `answers`, their lenient parts). An input with a check
    that cannot be parsed gets none: it is generated in full and scored as an error."""
    wanted: dict[str, list[Check]] = {}
    broken: set[str] = set()
    for c in cases:
        try:
            check = parse_check(c.expected)
            part = lenient(c.expected) if answers else None
        except InvalidInput:
            broken.add(c.input_hash)
            continue
        wanted.setdefault(c.input_hash, []).append(check)
        if part is not None:
            wanted[c.input_hash].append(part)
    return {h: checks for h, checks in wanted.items() if h not in broken}


def _all_decided(checks: Sequence[Check], text: str) -> bool:
    return bool(checks) and all(decided(c, text) is not None for c in checks)


def usable(out: EvalOutput, checks: Sequence[Check] | None) -> bool:
    """Whether a cached output can be read by `checks` (None: by anyone, it must be full).
    An output with an error is not: the failure may have been passing."""
    if out.error:
        return False
    return not out.stopped or (checks is not None and _all_decided(checks, out.output))


def output_counts(outputs: Any) -> dict[str, int]:
    """Of a run's distinct outputs: how many, how many stopped at their verdict, and the
    tokens they hold."""
    rows = list(outputs)
    return {
        "n": len(rows),
        "stopped_at_verdict": sum(1 for o in rows if o.stopped),
        "tokens": sum(o.completion_tokens for o in rows),
    }


def _missing_inputs(
    hub: Hub,
    cases: Sequence[Case],
    subject_hash: str,
    settings_hash: str,
    wanted: dict[str, list[Check]],
    full_outputs: bool,
) -> list[Case]:
    with hub.session() as s:
        have = _cached(s, [c.input_hash for c in cases], subject_hash, settings_hash)
    seen: set[str] = set()
    missing = []
    for c in cases:
        cached = have.get(c.input_hash)
        readers = None if full_outputs else wanted.get(c.input_hash)
        if (cached is None or not usable(cached, readers)) and c.input_hash not in seen:
            seen.add(c.input_hash)
            missing.append(c)
    return missing


def _generate(
    hub: Hub,
    revision: Revision,
    adapters: Sequence[Path],
    cases: list[Case],
    subject_hash: str,
    settings_hash: str,
    max_new_tokens: int,
    progress: Progress | None,
    wanted: dict[str, list[Check]],
) -> int:
    """Generate outputs for cases, committing them as they finish; returns how many.
    A case's output stops once the checks `wanted` for its input are all decided."""
    from upstream.engines.hf import HFEngine

    engine = HFEngine.for_revision(hub, revision, adapters)
    if not engine.loaded.tokenizer.chat_template:
        raise InvalidInput(
            f"{revision.model.name}@{revision.hash[:12]}: its tokenizer has no "
            "chat template, so chat cases cannot be run on it"
        )
    requests = [
        GenRequest(
            messages=c.messages,
            max_new_tokens=max_new_tokens,
            until=_until(wanted[c.input_hash]) if c.input_hash in wanted else None,
        )
        for c in cases
    ]
    pending: list[EvalOutput] = []
    finished: set[int] = set()

    def record(i: int, text: str, error: str, tokens: int, stopped: bool = False) -> None:
        finished.add(i)
        pending.append(
            EvalOutput(
                subject_hash=subject_hash,
                input_hash=cases[i].input_hash,
                settings_hash=settings_hash,
                output=text,
                error=error,
                completion_tokens=tokens,
                stopped=stopped,
            )
        )
        try:
            if len(pending) >= STORE_EVERY:
                _store_outputs(hub, pending)
                pending.clear()
            if progress:
                progress(len(finished), len(cases), "generating")
        except Exception as e:  # the run's own failure (a database error), not a case's
            raise _NotRecorded(e) from e

    # A case the engine refuses (too long, a template error) is its own error at once, so
    # that every other case still goes to the engine in one call and keeps its batch full.
    ready: list[int] = []
    for i, r in enumerate(requests):
        try:
            engine.check(r)
        except Exception as e:
            record(i, "", f"{type(e).__name__}: {e}", 0)
        else:
            ready.append(i)
    try:
        engine.generate(
            [requests[i] for i in ready],
            lambda k, o: record(
                ready[k], o.text, "", o.completion_tokens, o.finish_reason == "verdict"
            ),
        )
    except _NotRecorded as e:
        raise e.error from None
    except Exception:  # a case failed while generating: the rest one by one to find it
        for i in ready:
            if i in finished:
                continue
            try:
                o = engine.generate([requests[i]])[0]
            except Exception as e:  # recorded as this case's error; the run goes on
                record(i, "", f"{type(e).__name__}: {e}", 0)
            else:
                record(i, o.text, "", o.completion_tokens, o.finish_reason == "verdict")
    if pending:
        _store_outputs(hub, pending)
    return len(finished)


def _until(checks: list[Check]) -> Callable[[str], bool]:
    """A request's `until`: stop once every one of `checks` is decided on the text."""
    return lambda text: _all_decided(checks, text)


class _NotRecorded(Exception):
    """Storing an output failed: the run stops with the cause (no case is to blame)."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


def _store_outputs(hub: Hub, rows: list[EvalOutput]) -> None:
    """Write outputs; a concurrent run of the same subject may have written some first."""
    for attempt in range(3):
        try:
            with hub.session() as s, s.begin():
                for row in rows:
                    s.merge(row)
            return
        except IntegrityError:  # lost a race on the primary key: merge again, now updating
            if attempt == 2:
                raise


def _score(run_id: int, case: Case, split: str, out: EvalOutput | None) -> EvalResult:
    if out is None:
        return EvalResult(
            run_id=run_id,
            case_id=case.id,
            split=split,
            passed=False,
            error="no output was generated",
        )
    if out.error:
        return EvalResult(
            run_id=run_id, case_id=case.id, split=split, passed=False, error=out.error
        )
    try:
        check = parse_check(case.expected)
        if out.stopped and decided(check, out.output) is None:  # not for this check: a bug
            raise InvalidInput("its output stopped at another check's verdict")
        # a stopped output begins with what decided the verdict, so it scores the same
        outcome = check.score(out.output, embed)
    except Exception as e:  # a check that cannot be scored is this case's error, not the run's
        return EvalResult(
            run_id=run_id,
            case_id=case.id,
            split=split,
            passed=False,
            error=f"check could not be scored: {e}",
        )
    return EvalResult(
        run_id=run_id,
        case_id=case.id,
        split=split,
        passed=outcome.passed,
        score=outcome.score,
        explanation=outcome.explanation,
    )


class PassRate(Shape):
    """A pass rate with its Wilson 95 % interval."""

    n: int
    passed: int
    rate: float
    low: float
    high: float
    errors: int = Field(0, description="cases whose generation failed")


def metrics(rows: Sequence[EvalResult], tags: dict[str, list[str]]) -> dict[str, Any]:
    """Pass rate with a Wilson 95 % interval, overall, per split and per tag."""

    groups: dict[str, list[EvalResult]] = defaultdict(list)
    for r in rows:
        groups["all"].append(r)
        groups[f"split:{r.split}"].append(r)
        for t in tags.get(r.case_id, []):
            groups[f"tag:{t}"].append(r)

    def rate(rs: list[EvalResult]) -> dict[str, Any]:
        passed = sum(r.passed for r in rs)
        low, high = wilson(passed, len(rs))
        return {
            "n": len(rs),
            "passed": passed,
            "rate": passed / len(rs) if rs else 0.0,
            "low": low,
            "high": high,
            "errors": sum(1 for r in rs if r.error),
        }

    return {
        "all": rate(groups["all"]),
        "splits": {
            k.split(":", 1)[1]: rate(v) for k, v in sorted(groups.items()) if k.startswith("split:")
        },
        "tags": {
            k.split(":", 1)[1]: rate(v) for k, v in sorted(groups.items()) if k.startswith("tag:")
        },
    }


def run_summary(run: EvalRun, model: str, suite: str, version: int) -> dict[str, Any]:
    return {
        "run": run.id,
        "model": model,
        "revision": run.subject["revision"],
        "adapters": run.subject["adapters"],
        "suite": suite,
        "version": version,
        "split": run.split,
        "settings": run.settings,
        "generated": run.generated,
        "metrics": run.metrics,
        "subject_hash": run.subject_hash,
    }


EVAL_JOB = "evals.run"


def eval_job(
    hub: Hub,
    actor: Actor,
    ref: str,
    suite: str,
    version: int | None = None,
    split: str = "all",
    adapters: Sequence[Path] = (),
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    full_outputs: bool = False,
) -> dict[str, Any]:
    """Check an evaluation request (who asks, names, split, length) before any work; returns
    the arguments of its `evals.run` job. Adapters are paths on the hub's machine."""

    check_max_new_tokens(max_new_tokens)
    if split not in SPLITS:
        raise InvalidInput(f"split {split!r}: allowed {', '.join(SPLITS)}")
    with hub.session() as s:
        model = resolve(s, ref).model.name
        get_version(s, suite, version)
    require(actor, "evals.run", model)
    return {
        "ref": ref,
        "suite": suite,
        "version": version,
        "split": split,
        # absolute: the job may run in a worker started from another directory
        "adapters": [str(Path(a).absolute()) for a in adapters],
        "max_new_tokens": max_new_tokens,
        "full_outputs": full_outputs,
    }


def queue_eval(hub: Hub, actor: Actor, ref: str, suite: str, **options: Any) -> int:
    """Queue an evaluation for the hub's worker (see `eval_job`); returns the job id."""
    return hub.jobs.enqueue(EVAL_JOB, eval_job(hub, actor, ref, suite, **options), owner=actor)


def run_eval_job(ctx: JobContext) -> dict[str, Any]:
    """Job handler for `evals.run`."""
    a = ctx.args
    return run_eval(
        ctx.hub,
        a["ref"],
        a["suite"],
        a.get("version"),
        a.get("split", "all"),
        [Path(p) for p in a.get("adapters", [])],
        int(a.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)),
        ctx.progress,
        bool(a.get("full_outputs", False)),
    )


def latest_results(hub: Hub, subject_hash: str, version_id: int) -> dict[str, EvalResult]:
    """The newest results of a subject on a suite version, by case id."""
    with hub.session() as s:
        run = s.scalar(
            select(EvalRun)
            .where(
                EvalRun.subject_hash == subject_hash,
                EvalRun.suite_version_id == version_id,
                EvalRun.state == "done",
                EvalRun.split == "all",
            )
            .order_by(EvalRun.id.desc())
        )
        if run is None:
            return {}
        return {r.case_id: r for r in run.results}


# ---------------------------------------------------------------- reading runs


def list_runs(session: Any, limit: int = 25, offset: int = 0) -> list[dict[str, Any]]:
    """Finished and running evaluations, newest first, as `run_summary` shapes them."""
    runs = session.scalars(
        select(EvalRun).order_by(EvalRun.id.desc()).limit(limit).offset(offset)
    ).all()
    return [_summary(session, r) for r in runs]


def get_run(session: Any, run_id: int) -> dict[str, Any]:
    run = session.get(EvalRun, run_id)
    if run is None:
        raise NotFound(f"no evaluation run {run_id}")
    return _summary(session, run)


def _summary(session: Any, run: EvalRun) -> dict[str, Any]:
    revision = session.get(Revision, run.revision_id)
    sv = session.get(SuiteVersion, run.suite_version_id)
    suite = session.get(Suite, sv.suite_id)
    return {
        **run_summary(run, revision.model.name, suite.name, sv.number),
        "state": run.state,
        "created_at": run.created_at.isoformat(),
    }


def run_cases(
    session: Any, run_id: int, viewer: Actor, only: Sequence[str] | None = None
) -> dict[str, dict[str, Any]]:
    """The cases of a run as a page reads them: input, check, output and verdict, by
    case id; held-out cases only for a viewer who may see them (`suites.heldout`)."""
    run = session.get(EvalRun, run_id)
    if run is None:
        raise NotFound(f"no evaluation run {run_id}")
    suite = session.get(Suite, session.get(SuiteVersion, run.suite_version_id).suite_id)
    see_heldout = may_see_heldout(session, suite, viewer)
    q = select(EvalResult, Case).join(Case, Case.id == EvalResult.case_id)
    q = q.where(EvalResult.run_id == run_id)
    if only is not None:
        q = q.where(EvalResult.case_id.in_(list(only)[:1000]))
    rows = list(session.execute(q).tuples())
    if not see_heldout:
        hidden = withheld_cases(session, [c for _, c in rows])
        rows = [(r, c) for r, c in rows if r.split != "heldout" and c.id not in hidden]
    settings_hash = hashlib.sha256(json.dumps(run.settings, sort_keys=True).encode()).hexdigest()
    outputs = _cached(session, [c.input_hash for _, c in rows], run.subject_hash, settings_hash)
    out: dict[str, dict[str, Any]] = {}
    for r, c in rows:
        o = outputs.get(c.input_hash)
        out[c.id] = {
            "run": run_id,
            "case": c.id,
            "prompt": next((m["content"] for m in reversed(c.messages) if m["role"] == "user"), ""),
            "expected": c.expected,
            "split": r.split,
            "tags": list(c.tags),
            "report": c.report_id,
            "passed": r.passed,
            "explanation": r.explanation,
            "output": o.output if o else None,
            "stopped": bool(o and o.stopped),
        }
    return out


def tag_rates(cases: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Pass rate per tag (Wilson 95 % interval) over `cases` as `run_cases` shows them:
    for a viewer who may not see every case, the rates of the cases they see, so no tag
    of a hidden case is named."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for c in cases:
        for t in c["tags"]:
            groups[t].append(bool(c["passed"]))
    out = {}
    for tag, verdicts in sorted(groups.items()):
        passed = sum(verdicts)
        low, high = wilson(passed, len(verdicts))
        out[tag] = {"n": len(verdicts), "passed": passed, "rate": passed / len(verdicts),
                    "low": low, "high": high}  # fmt: skip
    return out


def full_output(hub: Hub, actor: Actor, run_id: int, case_id: str) -> dict[str, Any]:
    """The whole output of a case of a run whose output stopped at its verdict: generated
    now with the run's subject and settings (to its token limit) and cached in place of
    the prefix, so every page and run reading that output sees it whole from now on."""
    with hub.session() as s:
        run = s.get(EvalRun, run_id)
        if run is None:
            raise NotFound(f"no evaluation run {run_id}")
        case = s.get(Case, case_id)
        shown = run_cases(s, run_id, actor, [case_id]) if case is not None else {}
        if case is None or case_id not in shown:  # hidden cases are not found either
            raise NotFound(f"run {run_id} has no case {case_id[:12]}")
        revision = s.get(Revision, run.revision_id)
        assert revision is not None
        require(actor, "evals.run", revision.model.name)  # it may generate: as a run does
        s.expunge_all()
    if not shown[case_id]["stopped"]:
        return {"case": case_id, "output": shown[case_id]["output"], "generated": False}
    adapters = [Path(a["path"]) for a in run.subject["adapters"]]
    if engine_version(hub) != run.subject.get("engine"):
        raise Conflict(
            f"run {run_id} was generated by engine {run.subject.get('engine')}; this hub "
            f"now generates with {engine_version(hub)}, whose output would not be its own"
        )
    if not all(a.is_dir() for a in adapters) or (
        subject_of(revision, adapters, engine_version(hub))[1] != run.subject_hash
    ):
        raise Conflict(f"run {run_id}'s adapters are no longer on this hub as they were")
    subject_hash = run.subject_hash
    settings_hash = hashlib.sha256(json.dumps(run.settings, sort_keys=True).encode()).hexdigest()
    tokens = int(run.settings.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
    _generate(hub, revision, adapters, [case], subject_hash, settings_hash, tokens, None, {})
    with hub.session() as s:
        [stored] = _cached(s, [case.input_hash], subject_hash, settings_hash).values()
        return {"case": case_id, "output": stored.output, "generated": True}
