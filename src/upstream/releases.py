"""Releases: approved contributions merged into a new revision, checked, tagged, carded.

`plan_release` checks everything that can be checked before heavy work (who asks, the
method and its parameters, that every contribution is approved, of this model and of
one base revision, that every adapter blob is intact and fits the base) and records the
release. The job (`releases.build`) then

1. merges the adapters into the base, tensor by tensor (`upstream.merging`), or for
   `retrain` trains one adapter on the union of the contributions' datasets and merges
   that; the result is imported as a new revision whose parent is the base;
2. runs the contribution checks on the new revision against the base: the union of the
   claimed reports' cases, the guard suite and every community suite, judged by the
   model's merge policy; it adds **retention**: of the cases each contribution fixed on
   its own, the share the merged revision still passes;
3. if the policy holds: tags the revision `vN` and `latest`, marks the reports whose
   cases now all pass as fixed in it, reopens (back to confirmed) the reports fixed
   before whose cases fail again (a broken case the policy's margin let through), marks
   the contributions merged, and writes the credits ledger (`_ship`); otherwise keeps
   it as a `candidate`, with the reasons. A release built with `ship=False` (each
   candidate of `search_release`) stays a candidate even when it passes, until
   `ship_release` ships it;
4. writes the model card (README.md) into the revision's record.
"""

from __future__ import annotations

import functools
import platform
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field
from sqlalchemy import select

from upstream.access import ANONYMOUS, Actor, require
from upstream.ci import ACTOR, compare_on, judge, policy_for, suites_to_check
from upstream.contributions import adapter_dir, get_contribution, set_state, stored_dataset
from upstream.credits import CreditEntryOut, credits_table, record_release_credits
from upstream.db.schema import (
    Case,
    Contribution,
    EvalResult,
    Job,
    Model,
    Release,
    Report,
    Revision,
    RevisionParent,
    Tag,
    utcnow,
)
from upstream.errors import Conflict, InvalidInput, NotFound, UpstreamError
from upstream.evals import Progress, answers
from upstream.modelcard import render_card
from upstream.registry import get_model, import_dir, materialize, resolve, set_tag
from upstream.reports import get_report, hidden_from, prompt_text
from upstream.shapes import Shape
from upstream.stats import wilson
from upstream.suites import case_id
from upstream.triage import set_status

if TYPE_CHECKING:
    from upstream.hub import Hub
    from upstream.jobs import JobContext

JOB = "releases.build"
METHODS = ("linear", "ties", "dare_ties", "retrain")
BUILDING = ("queued", "merging", "checking")  # a release's states before its verdict


@dataclass
class ReleaseIn:
    model: str
    contributions: list[int]
    method: str = "linear"
    weights: list[float] | None = None
    density: float | None = None
    seed: int | None = None


class ReleaseCut(Shape):
    """A planned release whose build is queued: poll /api/jobs/{job}, then read the
    release."""

    id: int = Field(description="the release")
    model: str
    base: str = Field(description="the revision its contributions are merged into")
    params: dict[str, Any] = Field(description="the method and its checked parameters")
    job: int = Field(description="the job that builds and checks it")


def cut_release(hub: Hub, data: ReleaseIn, actor: Actor, attempts: int = 3) -> dict[str, Any]:
    """Plan a release and queue its build (tried `attempts` times; 1 for a CLI that runs it
    at once); returns {id, job, ...}."""
    planned = plan_release(hub, data, actor)
    return {**planned, "job": queue_release(hub, planned["id"], max_attempts=attempts)}


def plan_release(hub: Hub, data: ReleaseIn, actor: Actor) -> dict[str, Any]:
    """Check a release before any heavy work and record it; returns {id, ...}."""
    from upstream import merging

    require(actor, "releases.cut", data.model.partition("@")[0])
    author = actor.name
    if data.method not in METHODS:
        raise InvalidInput(f"method {data.method!r}: allowed {', '.join(METHODS)}")
    ids = list(dict.fromkeys(data.contributions))
    if not ids:
        raise InvalidInput("--from: name at least one approved contribution")
    hub.jobs.reap()  # a release whose worker died holds its contributions no longer
    problems: list[str] = []
    with hub.session() as s:
        model = get_model(s, data.model.partition("@")[0])
        found = [get_contribution(s, i) for i in ids]
        for c in found:
            if c.model_id != model.id:
                problems.append(f"#{c.id} is a contribution to {c.model.name}, not {model.name}")
            elif c.state != "approved":
                problems.append(f"#{c.id} is {c.state}, not approved")
        bases = {c.revision.hash for c in found}
        if len(bases) > 1:
            by_base = ", ".join(f"#{c.id} → {c.revision.hash[:12]}" for c in found)
            problems.append(f"they target different base revisions ({by_base})")
        latest = resolve(s, model.name)
        stale = [c for c in found if c.revision_id != latest.id]
        if stale and len(bases) == 1:  # merging into an older base would drop what followed
            problems.append(
                f"they target {stale[0].revision.hash[:12]}, but the latest revision is "
                f"{latest.hash[:12]}; contributions must be made against the latest"
            )
        if data.method == "retrain":
            problems += [
                f"#{c.id} is an adapter: retrain needs datasets"
                for c in found
                if c.kind != "dataset"
            ]
        for other in s.scalars(select(Release).where(Release.state.in_(BUILDING))):
            problems += [
                f"#{i} is in release {other.id} ({other.state})"
                for i in ids
                if i in other.contributions
            ]
        if problems:
            raise Conflict("cannot release: " + "; ".join(problems))
        base = found[0].revision
        adapters = {c.id: dict(c.pushes[-1].adapter or {}) for c in found}
        datasets = {c.id: dict(c.pushes[-1].files) for c in found if c.kind == "dataset"}
    missing = [f"#{i}" for i, files in adapters.items() if not files]
    if missing and data.method != "retrain":
        raise Conflict(f"cannot release: {', '.join(missing)} have no checked adapter")
    for cid, files in {**adapters, **datasets}.items():
        for name, f in files.items():
            if not hub.blobs.verify(f["sha256"]):
                raise InvalidInput(
                    f"contribution #{cid}: its {name} blob is missing or corrupt "
                    "(`upstream fsck` lists what is damaged)"
                )
    if data.method == "retrain":
        if data.weights or data.density is not None or data.seed is not None:
            raise InvalidInput(
                "retrain trains one adapter with the default recipe (seed 0): weights, "
                "density and seed do not apply"
            )
        params: dict[str, Any] = {"method": "retrain", "seed": 0}
    else:
        checked = merging.check_params(data.method, len(ids), data.weights, data.density, data.seed)
        params = checked.as_dict()
        merging.preflight(materialize(hub, base), [adapter_dir(hub, adapters[i]) for i in ids])
    with hub.session() as s, s.begin():
        release = Release(
            model_id=model.id,
            base_revision_id=base.id,
            method=data.method,
            params=params,
            contributions=ids,
            inputs={
                "base": base.hash,
                "adapters": {str(i): adapters[i] for i in ids},
                "datasets": {str(i): datasets[i] for i in datasets},
            },
            versions=_versions(),
            author=author,
        )
        s.add(release)
        s.flush()
        return {"id": release.id, "model": model.name, "base": base.hash, "params": params}


@dataclass(frozen=True)
class Candidate:
    """One way to build a release from the same contributions (a point of the search)."""

    method: str
    weights: tuple[float, ...] | None = None
    density: float | None = None
    seed: int | None = None

    @property
    def label(self) -> str:
        parts = [self.method]
        if self.weights:
            parts.append("weights " + ",".join(f"{w:g}" for w in self.weights))
        if self.density is not None:
            parts.append(f"density {self.density:g}")
        return " ".join(parts)


def search_space(n: int, all_datasets: bool) -> list[Candidate]:
    """The candidates `release --search` builds for `n` contributions, in the order tried.

    The plain sum of the deltas (linear, weight 1 each) keeps each fix as it was checked
    alone; a softer sum (0.75 each) trades some of each fix for less drift. With several
    contributions, ties at densities 0.8 and 0.5 drop each delta's smallest entries and
    the minority sign where they disagree, dare_ties at 0.5 drops entries at random and
    rescales, and retrain learns every dataset in one adapter (datasets only). With one
    contribution there is no interference to resolve: ties and dare would only thin the
    delta, and retraining would repeat the CI's own training.
    """
    out = [Candidate("linear"), Candidate("linear", (0.75,) * n)]
    if n > 1:
        out += [
            Candidate("ties", density=0.8),
            Candidate("ties", density=0.5),
            Candidate("dare_ties", density=0.5, seed=0),
        ]
        if all_datasets:
            out.append(Candidate("retrain"))
    return out


def search_release(
    hub: Hub,
    model: str,
    contributions: list[int],
    actor: Actor,
    dry_run: bool = False,
    methods: list[str] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Build every candidate of the search, check each, and ship the best that passes.

    The best is the passing candidate whose worst-kept contribution keeps the most of
    what it fixed alone (retention), then the highest mean retention, then the fewest
    cases broken. With `dry_run` nothing ships: every candidate stays a `candidate`, and
    a maintainer can ship one with `ship_release` (or build it again by its method and
    parameters, which reuses the merge and every cached output).
    """
    say = progress or (lambda done, total, message: None)
    with hub.session() as s:
        found = [get_contribution(s, i) for i in dict.fromkeys(contributions)]
        all_datasets = bool(found) and all(c.kind == "dataset" for c in found)
    space = search_space(len(found), all_datasets)
    if methods:
        unknown = sorted(set(methods) - set(METHODS))
        if unknown:
            raise InvalidInput(
                f"--methods: unknown {', '.join(unknown)}; allowed: {', '.join(METHODS)}"
            )
        space = [c for c in space if c.method in methods]
        if not space:
            raise InvalidInput(
                f"--methods {','.join(methods)}: no candidate left"
                + ("" if all_datasets else " (retrain needs every contribution to be a dataset)")
            )
    built: list[dict[str, Any]] = []
    for k, cand in enumerate(space):
        data = ReleaseIn(
            model,
            list(contributions),
            cand.method,
            list(cand.weights) if cand.weights else None,
            cand.density,
            cand.seed,
        )

        def step(done: float, total: float, message: str, k: int = k) -> None:
            say(k + (done / total if total else 0.0), len(space), f"{space[k].label}: {message}")

        try:
            planned = plan_release(hub, data, actor)
            summary = hub.jobs.run_now(queue_release(hub, planned["id"], ship=False), step)
        except UpstreamError as e:
            if k == 0 and not built:  # refused before anything was built: say so at once
                raise
            # one candidate that cannot be built (a retrain refused, a contribution
            # re-pushed meanwhile) does not lose the others' figures
            summary = _unbuilt(str(e))
        built.append({"candidate": cand.label, **summary})
    passing = [b for b in built if b["passed"]]
    best = max(passing, key=_search_key, default=None)
    shipped, ship_error = None, None
    if best is not None and not dry_run:
        try:
            shipped = ship_release(hub, best["id"], actor, model)
        except Conflict as e:  # changed since it was built: the figures still stand
            ship_error = str(e)
    return {
        "ship_error": ship_error,
        "model": model,
        "contributions": list(contributions),
        "dry_run": dry_run,
        "candidates": built,
        "chosen": best["id"] if best else None,
        "release": shipped,
    }


def _unbuilt(reason: str) -> dict[str, Any]:
    """A search candidate that could not be built, shaped like a release summary."""
    return {
        "id": None,
        "state": "not built",
        "tag": "",
        "revision": None,
        "passed": False,
        "reasons": [f"✗ {reason}"],
        "retention": {},
        "figures": release_figures({}),
    }


def _search_key(summary: dict[str, Any]) -> tuple[float, float, int]:
    kept = [
        1.0 if r["retention"] is None else r["retention"] for r in summary["retention"].values()
    ]
    figures = summary["figures"]
    return (min(kept, default=1.0), sum(kept) / max(len(kept), 1), -figures["broken"])


class ReleaseFigures(Shape):
    """A release report's counts, over every suite checked (no case ids: they are public)."""

    fixed: int = Field(description="cases the release fixed")
    broken: int = Field(description="cases the release broke")
    knowledge_lost: int
    guard_broken: int = Field(description="of `broken`, cases of the guard suite")
    retention: dict[str, float | None] = Field(
        description="contribution id → share of the cases it fixed alone that the release "
        "still passes (null: it fixed none)"
    )


def release_figures(checks: dict[str, Any]) -> dict[str, Any]:
    """A release report's figures, counts only: cases fixed and broken, knowledge lost,
    guard cases broken (over every suite checked), and each contribution's retention."""
    fixed = broken = lost = guard_broken = 0
    for r in checks.get("suites", []):
        d = r["splits"]["all"]
        fixed += d["fixed_count"]
        broken += d["broken_count"]
        lost += d.get("knowledge", {}).get("lost_count", 0)
        if r["kind"] == "guard":
            guard_broken += d["broken_count"]
    return {
        "fixed": fixed,
        "broken": broken,
        "knowledge_lost": lost,
        "guard_broken": guard_broken,
        "retention": {k: v["retention"] for k, v in checks.get("retention", {}).items()},
    }


def queue_release(hub: Hub, release_id: int, max_attempts: int = 1, ship: bool = True) -> int:
    with hub.session() as s, s.begin():
        release = get_release(s, release_id)
        args = {"release": release_id, "ship": ship}
        release.job_id = hub.jobs.enqueue(JOB, args, max_attempts)
        return release.job_id


def abandon_release(hub: Hub, job: Job) -> None:
    """A build whose worker stopped for good: the release failed (its contributions are
    free for another release; this one can be built again with `queue_release`)."""
    with hub.session() as s, s.begin():
        release = get_release(s, int(job.args["release"]))
        if release.state in BUILDING:
            release.state = "failed"


def run_release_job(ctx: JobContext) -> dict[str, Any]:
    """Job handler for `releases.build`."""
    ship = bool(ctx.args.get("ship", True))
    return build_release(ctx.hub, int(ctx.args["release"]), ctx.progress, ship)


def build_release(
    hub: Hub, release_id: int, progress: Progress | None = None, ship: bool = True
) -> dict[str, Any]:
    """Merge, import, check, and tag (or keep as a candidate) one planned release.

    With `ship` false a release that passes stays a candidate too (a search builds every
    candidate first and ships the best with `ship_release`). Safe to run again after a
    crash: the merge gives the same revision (same hash), which the import recognises,
    and the checks reuse every cached output.
    """
    say = progress or (lambda done, total, message: None)
    with hub.session() as s, s.begin():
        release = get_release(s, release_id)
        if release.state in ("released", "candidate"):
            raise Conflict(f"release {release_id} is {release.state}; it was built already")
        release.state = "merging"
    try:
        return _build(hub, release_id, say, ship)
    except BaseException:
        with hub.session() as s, s.begin():
            get_release(s, release_id).state = "failed"
        raise


def _build(hub: Hub, release_id: int, say: Progress, ship: bool) -> dict[str, Any]:

    with hub.session() as s:
        release = get_release(s, release_id)
        model_name, model_id = release.model.name, release.model_id
        base = release.base_revision
        ids, method = list(release.contributions), release.method
        params = {k: v for k, v in release.params.items() if k != "merge"}
        inputs = dict(release.inputs)
    with tempfile.TemporaryDirectory(dir=hub.settings.work_dir) as tmp:
        merged_dir = Path(tmp) / "merged"
        result = _merge(hub, base, ids, method, params, inputs, merged_dir, Path(tmp), say)
        source = {"kind": "release", "release": release_id, "method": method, "contributions": ids}
        imported = import_dir(hub, merged_dir, model_name, source, say, latest=False)
    with hub.session() as s, s.begin():
        release = get_release(s, release_id)
        revision = s.scalar(
            select(Revision).where(
                Revision.model_id == model_id, Revision.hash == imported.revision
            )
        )
        assert revision is not None
        if not any(p.parent_id == base.id for p in revision.parents):
            s.add(RevisionParent(child_id=revision.id, parent_id=base.id, role="base"))
        release.revision_id, release.state = revision.id, "checking"
        # what the merge did (tensors changed, shards, seconds); its parameters are above
        release.params = {**params, "merge": {k: v for k, v in result.items() if k != "params"}}
        contributions = s.scalars(select(Contribution).where(Contribution.id.in_(ids)))
        fixes = sorted({r for c in contributions for r in c.fixes})
    base_ref, new_ref = f"{model_name}@{base.hash}", f"{model_name}@{imported.revision}"
    suites = suites_to_check(hub, f"claims-release-{release_id}", model_id, fixes)
    results = [compare_on(hub, base_ref, new_ref, [], name, kind, say) for name, kind in suites]
    passed, reasons = judge(policy_for(hub.settings, model_name), results)
    passing = _candidate_passes(hub, results)
    retention = _retention(hub, ids, passing)
    for cid, r in retention.items():
        if r["retention"] is not None:
            reasons.append(
                f"ℹ contribution #{cid} retains {r['retained']} of the {r['fixed_alone']} cases "
                f"it fixed alone ({r['retention']:.0%})"
            )
    return _finish(hub, release_id, passed, reasons, results, retention, passing, ship)


def _merge(
    hub: Hub,
    base: Revision,
    ids: list[int],
    method: str,
    params: dict[str, Any],
    inputs: dict[str, Any],
    out: Path,
    tmp: Path,
    say: Progress,
) -> dict[str, Any]:
    """Write the merged model to `out`; returns what the merge recorded."""
    from upstream import merging

    base_dir = materialize(hub, base)
    if method == "retrain":
        adapters = [_retrain(hub, base, base_dir, ids, inputs, tmp / "retrained", say)]
        merge_params = merging.check_params("linear", 1)
    else:
        adapters = [adapter_dir(hub, inputs["adapters"][str(i)]) for i in ids]
        merge_params = merging.check_params(
            method, len(ids), params.get("weights"), params.get("density"), params.get("seed")
        )
    merging.preflight(base_dir, adapters)
    result = merging.merge(
        base_dir,
        adapters,
        merge_params,
        out,
        lambda done, total, message: say(done, total, f"merging: {message}"),
    )
    return result.as_dict()


def _retrain(
    hub: Hub,
    base: Revision,
    base_dir: Path,
    ids: list[int],
    inputs: dict[str, Any],
    out: Path,
    say: Progress,
) -> Path:
    """One adapter trained on the union of the contributions' datasets (default recipe)."""
    from upstream.training import Recipe, train_adapter

    conversations = []
    for cid in ids:
        conversations += stored_dataset(hub, inputs["datasets"][str(cid)], f"contribution #{cid}")
    train_adapter(
        base_dir,
        conversations,
        Recipe(),
        out,
        lambda done, total, message: say(done, total, f"retraining: {message}"),
        functools.partial(answers, hub, base),  # replayed answers cached
    )
    return out


def _candidate_passes(hub: Hub, results: list[dict[str, Any]]) -> dict[str, bool]:
    """Case id → passed, under the merged revision, over every suite checked."""
    runs = [r["candidate_run"] for r in results]
    with hub.session() as s:
        rows = s.scalars(select(EvalResult).where(EvalResult.run_id.in_(runs)))
        return {row.case_id: row.passed for row in rows}


def _retention(hub: Hub, ids: list[int], passing: dict[str, bool]) -> dict[int, dict[str, Any]]:
    """Per contribution: the cases it fixed alone, and how many the merge still passes."""
    out: dict[int, dict[str, Any]] = {}
    with hub.session() as s:
        for cid in ids:
            checks = get_contribution(s, cid).pushes[-1].checks or {}
            alone = {
                i
                for r in checks.get("suites", [])
                for i in r["splits"]["all"]["fixed"]
                if i in passing
            }
            kept = sum(passing[i] for i in alone)
            out[cid] = {
                "fixed_alone": len(alone),
                "retained": kept,
                "retention": kept / len(alone) if alone else None,
            }
    return out


def _finish(
    hub: Hub,
    release_id: int,
    passed: bool,
    reasons: list[str],
    results: list[dict[str, Any]],
    retention: dict[int, dict[str, Any]],
    passing: dict[str, bool],
    ship: bool = True,
) -> dict[str, Any]:
    fixed_reports: list[int] = []
    with hub.session() as s, s.begin():
        release = get_release(s, release_id)
        revision = release.revision
        assert revision is not None
        changed = _changed_since_plan(s, release)
        passed = passed and not changed
        release.checks = {
            "passed": passed,
            "reasons": [*reasons, *changed],
            "suites": results,
            "retention": {str(k): v for k, v in retention.items()},
        }
        release.finished_at = utcnow()
        release.state = "candidate"
        if passed and ship:
            fixed_reports = _ship(s, release, passing)
        s.flush()
        revision.card = _card(s, release, fixed_reports)
        return release_summary(release)


def ship_release(
    hub: Hub, release_id: int, actor: Actor, model: str | None = None
) -> dict[str, Any]:
    """Release a candidate that passed its checks (one a search built and did not ship);
    `model`, when given, must be the release's model."""

    with hub.session() as s, s.begin():
        # locked: two ships at once (of one candidate, or of two siblings of one model)
        # must not both pass the checks below and both tag
        release = get_release(s, release_id, lock=True)
        require(actor, "releases.cut", release.model.name)
        s.get(Model, release.model_id, with_for_update=True)
        if model is not None and release.model.name != model.partition("@")[0]:
            raise InvalidInput(
                f"release {release_id} is a release of {release.model.name}, not {model}"
            )
        checks = release.checks or {}
        if release.revision is None:
            raise Conflict(f"release {release_id} has no revision yet ({release.state})")
        if release.state != "candidate" or not checks.get("passed"):
            why = release.state if release.state != "candidate" else "a candidate that failed"
            raise Conflict(f"release {release_id} is {why}; only a passing candidate can ship")
        problems = [r.lstrip("✗ ") for r in _changed_since_plan(s, release)]
        if resolve(s, release.model.name).id != release.base_revision_id:
            problems.append("the model's latest revision is no longer this release's base")
        if problems:
            raise Conflict(f"cannot ship release {release_id}: " + "; ".join(problems))
        passing = _candidate_passes(hub, checks["suites"])
        fixed_reports = _ship(s, release, passing)
        s.flush()
        release.revision.card = _card(s, release, fixed_reports)
        return release_summary(release)


def _ship(session: Any, release: Release, passing: dict[str, bool]) -> list[int]:
    """Tag a checked release vN and latest, mark what it fixed, merge and credit; the
    reports marked fixed."""

    revision = release.revision
    assert revision is not None and release.checks is not None
    results = release.checks["suites"]
    release.state, release.tag = "released", _next_tag(session, release.model_id)
    set_tag(session, revision, release.tag)
    set_tag(session, revision, "latest")
    fixed_cases = {i for r in results for i in r["splits"]["all"]["fixed"]}
    fixed_reports = _mark_fixed(session, revision, passing, fixed_cases, release.id)
    _reopen_regressed(session, revision, passing, release.tag)
    for cid in release.contributions:
        c = get_contribution(session, cid)
        set_state(session, c, "merged", ACTOR, f"release {release.tag} ({revision.hash[:12]})")
    session.flush()
    record_release_credits(
        session, release, fixed_reports, list(release.contributions), _stored_retention(release)
    )
    return fixed_reports


def _changed_since_plan(session: Any, release: Release) -> list[str]:
    """Reasons, if a contribution was closed, rejected or re-pushed while merging."""
    out = []
    for cid in release.contributions:
        c = get_contribution(session, cid)
        if release.method == "retrain":  # trained from the datasets, not the adapters
            pushed = c.pushes[-1].files != release.inputs["datasets"].get(str(cid))
        else:
            pushed = c.pushes[-1].adapter != release.inputs["adapters"].get(str(cid))
        if c.state != "approved" or pushed:
            what = "has a new push" if pushed else f"is {c.state}"
            out.append(f"✗ contribution #{cid} {what} since the release was planned")
    return out


def _mark_fixed(
    session: Any,
    revision: Revision,
    passing: dict[str, bool],
    fixed_cases: set[str],
    release_id: int,
) -> list[int]:
    """Reports that the release fixed: confirmed, of this model, every input (the prompt and
    each variant, with its check) evaluated and passing, and at least one failing before."""

    report_ids = {
        c.report_id
        for c in session.scalars(select(Case).where(Case.id.in_(list(passing))))
        if c.report_id is not None
    }
    fixed = []
    for report_id in sorted(report_ids):
        report = get_report(session, report_id)
        if report.status != "confirmed" or report.model_id != revision.model_id:
            continue
        checks = [(v.messages, v.expected or report.expected) for v in report.variants]
        ids = [case_id(messages, check) for messages, check in checks if check is not None]
        if ids and all(passing.get(i) for i in ids) and fixed_cases & set(ids):
            set_status(session, report, "fixed", ACTOR, f"passes in release {release_id}")
            report.fixed_in_revision_id = revision.id
            fixed.append(report_id)
    return fixed


def _reopen_regressed(
    session: Any, revision: Revision, passing: dict[str, bool], tag: str
) -> list[int]:
    """Reports fixed before that fail again in this release (a case of theirs was checked
    and no longer passes, which the policy's margin can let through): back to confirmed,
    so that they are open to be fixed again. Returns their ids."""

    failing = [i for i, ok in passing.items() if not ok]
    report_ids = session.scalars(
        select(Case.report_id).where(Case.id.in_(failing), Case.report_id.is_not(None))
    )
    reopened = []
    for report_id in sorted(set(report_ids)):
        report = get_report(session, report_id)
        if report.status != "fixed" or report.model_id != revision.model_id:
            continue
        set_status(session, report, "confirmed", ACTOR, f"fails again in release {tag}")
        report.fixed_in_revision_id = None
        reopened.append(report_id)
    return reopened


def _next_tag(session: Any, model_id: int) -> str:
    """v2, v3, …: one more than the highest vN of the model (the imported base is v1)."""
    numbers = [
        int(m.group(1))
        for name in session.scalars(select(Tag.name).where(Tag.model_id == model_id))
        if (m := re.fullmatch(r"v(\d+)", name))
    ]
    return f"v{max(numbers, default=1) + 1}"


def _stored_retention(release: Release) -> dict[int, dict[str, Any]]:
    """Each contribution's retention as the release report stores it (JSON: string keys)."""
    stored = (release.checks or {}).get("retention", {})
    return {int(k): v for k, v in stored.items()}


def _card(session: Any, release: Release, fixed: list[int]) -> str:

    retention = _stored_retention(release)
    revision, base = release.revision, release.base_revision
    assert revision is not None and release.checks is not None
    results = []
    for r in release.checks["suites"]:
        if r["kind"] == "claims":
            continue
        a = r["splits"]["all"]
        held = r["splits"].get("heldout")
        results.append(
            {
                "suite": r["suite"],
                "version": r["version"],
                "n": a["n"],
                "rate": a["cand_rate"],
                "base_rate": a["base_rate"],
                **_interval("", a["cand_rate"], a["n"]),
                **_interval("base_", a["base_rate"], a["n"]),
                "heldout": (
                    {
                        "n": held["n"],
                        "rate": held["cand_rate"],
                        **_interval("", held["cand_rate"], held["n"]),
                    }
                    if held
                    else None
                ),
            }
        )
    contributions = []
    for cid in release.contributions:
        c = get_contribution(session, cid)
        contributions.append(
            {
                "id": c.id,
                "title": c.title,
                "author": c.author,
                "kind": c.kind,
                "fixes": list(c.fixes),
                "retention": retention.get(cid),
            }
        )
    info = {
        "model": release.model.name,
        "revision": revision.hash,
        "tag": release.tag or "candidate",
        "base": {"model": release.model.name, "revision": base.hash},
        "license": base.source.get("license", "other"),
        "method": release.method,
        "params": release.params,
        "versions": release.versions,
        "created_at": (release.finished_at or utcnow()).isoformat(),
        "contributions": contributions,
        # the card is public: only the fixed reports anyone may read (not those filed
        # without consent, nor those behind held-out cases) are named with their prompt
        "reports_fixed": [
            {
                "id": i,
                "prompt": prompt_text(get_report(session, i).messages),
                "reporter": get_report(session, i).reporter,
            }
            for i in _public(session, fixed)
        ],
        "results": results,
        "credits": credits_table(session, release_id=release.id),
    }
    return render_card(info)


def _public(session: Any, report_ids: list[int]) -> list[int]:
    """Those of `report_ids` an anonymous visitor may read, in their order."""
    q = select(Report.id).where(Report.id.in_(report_ids))
    visible = hidden_from(session, ANONYMOUS)
    shown = set(session.scalars(q.where(visible) if visible is not None else q))
    return [i for i in report_ids if i in shown]


def _interval(prefix: str, rate: float, n: int) -> dict[str, float]:

    low, high = wilson(round(rate * n), n)
    return {f"{prefix}low": low, f"{prefix}high": high}


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("upstream-hub", "torch", "transformers", "peft", "safetensors"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


# ---------------------------------------------------------------- reading


def get_release(session: Any, release_id: int, lock: bool = False) -> Release:
    """The release, or NotFound; `lock` holds its row until the transaction ends
    (SELECT … FOR UPDATE on PostgreSQL; SQLite's one writer serialises anyway)."""
    release = session.get(Release, release_id, with_for_update=lock)
    if release is None:
        raise NotFound(f"no release {release_id}")
    return release


class RetentionOut(Shape):
    """Of the cases a contribution fixed on its own, how many the release still passes."""

    fixed_alone: int
    retained: int
    retention: float | None = Field(description="retained / fixed_alone; null: it fixed none")


class ReleaseSummary(Shape):
    """A release: `GET /api/releases`, and the answer to shipping one."""

    id: int
    model: str
    state: str = Field(description="queued, merging, checking, released, candidate or failed")
    tag: str = Field(description="vN once released; empty before")
    method: str = Field(description=", ".join(METHODS))
    params: dict[str, Any] = Field(description="the method's parameters: weights, density, seed")
    contributions: list[int] = Field(description="the contribution ids merged, in order")
    base: str = Field(description="the revision merged into")
    revision: str | None = Field(description="the merged revision; null until built")
    passed: bool | None = Field(description="the checks' verdict; null until checked")
    reasons: list[str] = Field(description="why it passed or failed, one line each")
    retention: dict[str, RetentionOut] = Field(description="per contribution id")
    figures: ReleaseFigures
    versions: dict[str, str] = Field(description="library → version it was built with")
    inputs: dict[str, Any] = Field(description="the hashes merged: base, adapters, datasets")


class ReleaseList(Shape):
    releases: list[ReleaseSummary]


class ReleaseDetail(ReleaseSummary):
    """One release with its credits ledger: `GET /api/releases/{id}`."""

    credits: list[CreditEntryOut] = Field(description="in the order they were written")


def release_summary(release: Release) -> dict[str, Any]:
    checks = release.checks or {}
    return {
        "id": release.id,
        "model": release.model.name,
        "state": release.state,
        "tag": release.tag,
        "method": release.method,
        "params": release.params,
        "contributions": list(release.contributions),
        "base": release.base_revision.hash,
        "revision": release.revision.hash if release.revision else None,
        "passed": checks.get("passed"),
        "reasons": checks.get("reasons", []),
        "retention": checks.get("retention", {}),
        # counts only: the stored report names held-out cases, and summaries are public
        "figures": release_figures(checks),
        "versions": release.versions,
        "inputs": release.inputs,
    }


def export_revision(hub: Hub, actor: Actor, ref: str, out: Path) -> dict[str, Any]:
    """Write a revision as a plain model directory (weights, tokenizer, card) to `out`."""

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidInput(f"--out {out}: exists and is not an empty directory; give a new one")
    with hub.session() as s:
        revision = resolve(s, ref)
        require(actor, "models.export", revision.model.name)
        source = materialize(hub, revision)
        card = revision.card or f"# {revision.model.name}\n\nRevision {revision.hash}.\n"
        name, rev_hash = revision.model.name, revision.hash
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for f in sorted(source.iterdir()):
        if f.name.startswith(".") or f.name == "README.md":
            continue
        shutil.copyfile(f, out / f.name)  # real copies, not links into the blob store
        files.append(f.name)
    (out / "README.md").write_text(card, "utf-8")
    return {"model": name, "revision": rev_hash, "out": str(out), "files": [*files, "README.md"]}
