"""Candidate vs base on the same cases, and the leaderboard of revisions × suites.

A comparison evaluates both subjects on the same suite version (incrementally: cached
outputs are reused), then reports the cases fixed (fail→pass) and broken (pass→fail) by
id, the paired difference of pass rates with its standard error clustered by source
report, its 95 % interval, the exact McNemar p-value, and the minimum detectable effect
of the suite. Held-out case ids are shown to maintainers only; others see counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from upstream.db.schema import Case, EvalResult, EvalRun, Revision, Suite, SuiteVersion
from upstream.engines.base import DEFAULT_MAX_NEW_TOKENS
from upstream.evals import Progress, run_eval

if TYPE_CHECKING:
    from upstream.hub import Hub


def compare(
    hub: Hub,
    base_ref: str,
    cand_ref: str,
    suite: str,
    version: int | None = None,
    base_adapters: Sequence[Path] = (),
    cand_adapters: Sequence[Path] = (),
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    can_see_heldout: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Evaluate both subjects on the suite (cached where possible) and compare them."""
    from upstream import stats

    base = run_eval(hub, base_ref, suite, version, "all", base_adapters, max_new_tokens, progress)
    cand = run_eval(
        hub, cand_ref, suite, base["version"], "all", cand_adapters, max_new_tokens, progress
    )
    with hub.session() as s:
        base_rows = _results(s, base["run"])
        cand_rows = _results(s, cand["run"])
        case_ids = list(base_rows)
        cases = {c.id: c for c in s.scalars(select(Case).where(Case.id.in_(case_ids)))}
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
        result = stats.compare(
            {i: base_rows[i].passed for i in ids}, {i: cand_rows[i].passed for i in ids}, clusters
        )
        d = result.as_dict()
        if not can_see_heldout:  # held-out ids stay hidden: counts only
            hidden = {i for i in ids if split[i] == "heldout"}
            for key in ("fixed", "broken"):
                d[f"{key}_count"] = len(d[key])
                d[key] = [i for i in d[key] if i not in hidden]
        else:
            d["fixed_count"], d["broken_count"] = len(d["fixed"]), len(d["broken"])
        # say when the suite cannot tell: the observed change is below what it can detect
        d["underpowered"] = abs(d["paired"]["diff"]) < d["mde"]
        out["splits"][name] = d
    return out


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
    return note + ". McNemar's p counts a report's variants as independent cases."


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
