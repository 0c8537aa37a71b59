"""Candidate vs base on the same cases, and the leaderboard of revisions × suites.

A comparison evaluates both subjects on the same suite version (incrementally: cached
outputs are reused), then reports the cases fixed (fail→pass) and broken (pass→fail) by
id, the paired difference of pass rates with its standard error clustered by source
report, its 95 % interval, the exact McNemar p-value, and the minimum detectable effect
of the suite. Held-out case ids are shown to maintainers only; others see counts.

It also reports **knowledge**: on the cases whose check has an answer-bearing part
(`checks.lenient`), whether the base stated the right answer somewhere (even in the wrong
form) and whether the candidate still passes. A fine-tune that teaches an answer's form
can lose what the model knew: the base's "A spider has eight legs (8)" fails `exact "8"`
yet knows it; a candidate answering "6" passes the form and has lost the fact. Knowledge
lost counts as broken in `harm`, the pairing the merge policy's non-inferiority rule
reads (`stats.Harm`); fixed, broken and McNemar's p stay strict.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field
from sqlalchemy import select

from upstream import stats
from upstream.access import ANONYMOUS, Actor, require
from upstream.accounts import actor_named
from upstream.checks import Check, lenient
from upstream.contributions import resolve_adapters
from upstream.db.schema import Case, EvalResult, EvalRun, Revision, Suite, SuiteVersion
from upstream.engines.base import DEFAULT_MAX_NEW_TOKENS, check_max_new_tokens
from upstream.errors import InvalidInput
from upstream.evals import PassRate, Progress, _cached, run_eval, settings_of
from upstream.registry import resolve
from upstream.settings import Policy, policy_for
from upstream.shapes import Shape
from upstream.stats import Allowance
from upstream.suites import get_suite, get_version, may_see_heldout

if TYPE_CHECKING:
    from upstream.hub import Hub
    from upstream.jobs import JobContext


COMPARE_JOB = "evals.compare"
PR_REF = re.compile(r"^pr:\d{1,18}$")


def queue_compare(
    hub: Hub,
    actor: Actor,
    base_ref: str,
    cand_ref: str,
    suite: str,
    version: int | None = None,
    cand_adapters: Sequence[str] = (),
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> int:
    """Queue `compare` as a job for the API (it evaluates both subjects). Adapters are
    contributions (`pr:N`), never paths. The result is `actor`'s view (held-out ids only
    if they may see them), and only they and admins read it (`jobs.job_json`)."""
    bad = [a for a in cand_adapters if not PR_REF.match(a)]
    if bad:
        raise InvalidInput(f"candidate_adapters {bad[0]!r}: name contributions as pr:N")
    check_max_new_tokens(max_new_tokens)
    with hub.session() as s:
        model = resolve(s, base_ref).model.name
        resolve(s, cand_ref)
        get_version(s, suite, version)
    require(actor, "evals.run", model)
    resolve_adapters(hub, list(cand_adapters))  # each names a contribution with an adapter
    args = {
        "base": base_ref,
        "candidate": cand_ref,
        "suite": suite,
        "version": version,
        "adapters": list(cand_adapters),
        "max_new_tokens": max_new_tokens,
        "viewer": actor.name,
        "scopes": sorted(actor.scopes) if actor.scopes is not None else None,
    }
    return hub.jobs.enqueue(COMPARE_JOB, args, owner=actor)


def run_compare_job(ctx: JobContext) -> dict[str, Any]:
    """Job handler for `evals.compare`: the comparison as the one who asked may see it."""
    a = ctx.args
    user = actor_named(ctx.hub, a["viewer"])
    scopes = frozenset(a["scopes"]) if a.get("scopes") is not None else None
    viewer = Actor(user.name, user.role, scopes, user.model_roles, user.user_id)
    return compare(
        ctx.hub,
        a["base"],
        a["candidate"],
        a["suite"],
        a.get("version"),
        (),
        resolve_adapters(ctx.hub, list(a.get("adapters", []))),
        int(a.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)),
        viewer,
        ctx.progress,
    )


def compare(
    hub: Hub,
    base_ref: str,
    cand_ref: str,
    suite: str,
    version: int | None = None,
    base_adapters: Sequence[Path] = (),
    cand_adapters: Sequence[Path] = (),
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    viewer: Actor = ANONYMOUS,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Evaluate both subjects on the suite (cached where possible) and compare them;
    held-out case ids are named only to a `viewer` who may see them."""
    with hub.session() as s:
        model = resolve(s, base_ref).model.name
    require(viewer, "evals.run", model)
    with hub.session() as s:  # held-out ids by the suite's model, as everywhere
        can_see_heldout = may_see_heldout(s, get_suite(s, suite), viewer)
    # Both sides read the strict verdict and whether the output states the answer, so
    # outputs stop only when both are decided; a stopped output is never compared as
    # text with another (only verdicts are).
    base = run_eval(
        hub,
        base_ref,
        suite,
        version,
        "all",
        base_adapters,
        max_new_tokens,
        progress,
        answers=True,
    )
    cand = run_eval(
        hub,
        cand_ref,
        suite,
        base["version"],
        "all",
        cand_adapters,
        max_new_tokens,
        progress,
        answers=True,
    )
    policy = policy_for(hub.settings, base["model"])
    _, settings_hash = settings_of(max_new_tokens)  # the settings both runs generated with
    with hub.session() as s:
        base_rows = _results(s, base["run"])
        cand_rows = _results(s, cand["run"])
        case_ids = list(base_rows)
        cases = {c.id: c for c in s.scalars(select(Case).where(Case.id.in_(case_ids)))}
        parts = {cid: _lenient_part(c) for cid, c in cases.items()}
        asked = [cases[cid] for cid, part in parts.items() if part is not None]
        base_knew = _states(s, asked, parts, base["subject_hash"], settings_hash)
        cand_knew = _states(s, asked, parts, cand["subject_hash"], settings_hash)
    split = {cid: r.split for cid, r in base_rows.items()}
    clusters = {cid: f"report:{c.report_id}" for cid, c in cases.items() if c.report_id}
    out: dict[str, Any] = {
        "suite": suite,
        "version": base["version"],
        "base": _subject(base),
        "candidate": _subject(cand),
        "splits": {},
    }
    for name in ("all", "public", "heldout"):
        ids = [cid for cid in case_ids if name == "all" or split[cid] == name]
        if not ids:
            continue
        d = compare_split(
            {i: base_rows[i].passed for i in ids},
            {i: cand_rows[i].passed for i in ids},
            clusters,
            base_knew,
            cand_knew,
            policy,
        )
        if not can_see_heldout:  # held-out ids stay hidden: counts only
            hidden = {i for i in ids if split[i] == "heldout"}
            for key in ("fixed", "broken"):
                d[key] = [i for i in d[key] if i not in hidden]
            d["knowledge"]["lost"] = [i for i in d["knowledge"]["lost"] if i not in hidden]
        out["splits"][name] = d
    return out


def compare_split(
    base_passed: dict[str, bool],
    cand_passed: dict[str, bool],
    clusters: dict[str, str],
    base_knew: dict[str, bool],
    cand_knew: dict[str, bool],
    policy: Policy,
) -> dict[str, Any]:
    """One split compared, as plain data: `stats.compare`, `knowledge` and `harm`.

    `*_passed`: case id → the strict check passed; `*_knew`: case id → the output states
    the answer (`checks.lenient`), for the cases whose check has an answer-bearing part.
    """
    ids = list(base_passed)
    result = stats.compare(base_passed, cand_passed, clusters, base_knew, cand_knew)
    d = result.as_dict()
    d["fixed_count"], d["broken_count"] = len(result.fixed), len(result.broken)
    # say when the suite cannot tell: the observed change is below what it can detect
    d["underpowered"] = abs(result.paired.diff) < result.mde
    d["knowledge"] = knowledge(ids, cand_passed, base_knew, cand_knew)
    d["harm"]["margin"] = policy.margin
    rule = stats.allowance(result.n, policy.margin, policy.regression_p)
    d["harm"]["resolvable"] = rule.breaks
    d["harm"]["by_bound"] = rule.by_bound
    return d


def knowledge(
    ids: Sequence[str],
    cand_passed: dict[str, bool],
    base_knew: dict[str, bool],
    cand_knew: dict[str, bool],
) -> dict[str, Any]:
    """Knowledge kept and lost on the cases whose check states an answer (`*_knew` keys).

    knew: the base stated the answer (`checks.lenient`), in whatever form; of those, kept:
    the candidate passes the check or still states the answer, lost: it does neither;
    learned: the base did not state it and the candidate passes; neither: no subject
    states it. A candidate identical to the base keeps everything it knew.
    """
    asked = [i for i in ids if i in base_knew]
    knew = [i for i in asked if base_knew[i]]
    lost = sorted(i for i in knew if not cand_passed[i] and not cand_knew[i])
    return {
        "n": len(asked),
        "knew": len(knew),
        "kept": len(knew) - len(lost),
        "lost": lost,
        "lost_count": len(lost),
        "learned": sum(1 for i in asked if not base_knew[i] and cand_passed[i]),
        "neither": sum(1 for i in asked if not base_knew[i] and not cand_knew[i]),
    }


def _lenient_part(case: Case) -> Check | None:
    try:
        return lenient(case.expected)
    except InvalidInput:  # a check damaged after the fact is the run's error, scored there
        return None


def _states(
    session: Any,
    cases: Sequence[Case],
    parts: dict[str, Check | None],
    subject_hash: str,
    settings_hash: str,
) -> dict[str, bool]:
    """Case id → the subject's cached output states the expected answer (leniently)."""
    outputs = _cached(session, [c.input_hash for c in cases], subject_hash, settings_hash)
    found: dict[str, bool] = {}
    for c in cases:
        out, part = outputs.get(c.input_hash), parts[c.id]
        assert part is not None
        found[c.id] = bool(out and not out.error and part.score(out.output).passed)
    return found


def _results(session: Any, run_id: int) -> dict[str, EvalResult]:
    return {
        r.case_id: r for r in session.scalars(select(EvalResult).where(EvalResult.run_id == run_id))
    }


def _subject(summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": summary["model"],
        "revision": summary["revision"],
        "adapters": [a["sha256"] for a in summary["adapters"]],
        "run": summary["run"],
        "generated": summary["generated"],
        "rate": summary["metrics"]["all"]["rate"],
    }


def detectable_note(d: dict[str, Any]) -> str:
    """A sentence saying what the suite is too small to see."""
    note = (
        f"with {d['n']} cases this suite can detect a change of about {d['mde']:.0%} in "
        "pass rate (α 0.05, power 0.8)"
    )
    if d.get("underpowered"):
        note += (
            f"; the observed {d['paired']['diff']:+.1%} is smaller than that, so this "
            "suite is too small to tell whether the candidate differs"
        )
    note += ". McNemar's p counts a report's variants as independent cases."
    harm = d.get("harm")
    if harm and "by_bound" in harm:
        rule = Allowance(harm["resolvable"], harm["by_bound"])
        margin = harm["margin"]
        note += f" At the merge policy's margin of {margin:.0%}, {rule.describe(d['n'], margin)}."
    return note


class BoardRow(Shape):
    suite: str
    version: int
    model: str
    revision: str
    adapters: list[str] = Field(description="the first 12 characters of each adapter's sha256")
    all: PassRate
    public: PassRate | None
    heldout: PassRate | None
    run: int = Field(description="the evaluation run")


class Leaderboard(Shape):
    leaderboard: list[BoardRow] = Field(description="by suite, best pass rate first")


def leaderboard(hub: Hub, suite: str | None = None) -> list[dict[str, Any]]:
    """Revisions × suites: the newest full run of each subject on each suite's newest version."""
    with hub.session() as s:
        q = select(Suite).where(Suite.kind != "claims").order_by(Suite.name)
        if suite:
            q = q.where(Suite.name == suite)
        rows = []
        for st in s.scalars(q):
            if not st.versions:
                continue
            latest: SuiteVersion = st.versions[-1]
            runs = s.scalars(
                select(EvalRun)
                .where(
                    EvalRun.suite_version_id == latest.id,
                    EvalRun.state == "done",
                    EvalRun.split == "all",
                )
                .order_by(EvalRun.id.desc())
            )
            seen: set[str] = set()
            for run in runs:
                if run.subject_hash in seen or not run.metrics:
                    continue
                seen.add(run.subject_hash)
                revision = s.get(Revision, run.revision_id)
                m = run.metrics
                rows.append(
                    {
                        "suite": st.name,
                        "version": latest.number,
                        "model": revision.model.name if revision else "?",
                        "revision": run.subject["revision"],
                        "adapters": [a["sha256"][:12] for a in run.subject["adapters"]],
                        "all": m["all"],
                        "public": m["splits"].get("public"),
                        "heldout": m["splits"].get("heldout"),
                        "run": run.id,
                    }
                )
        rows.sort(key=lambda r: (r["suite"], -r["all"]["rate"]))
        return rows
