"""The CI of a contribution: validate, train, evaluate against the base, and a verdict.

For one push of a contribution, as a job (`contributions.check`):

1. validate the content again (it was validated on upload; a stored blob could rot);
2. train a LoRA adapter on the target revision when the push is a dataset;
3. evaluate base and candidate (base + adapter) on: the cases of the reports the
   contribution claims to fix (a `claims` suite of its own), every suite of the model
   (public and held-out splits), and the model's guard suite of ordinary instructions;
   the base's outputs are cached, so they are generated once per revision;
4. compare them per suite: fixed and broken cases, paired difference and interval,
   exact McNemar p, and knowledge kept and lost (`comparisons.knowledge`);
5. judge the comparisons by the model's merge policy (`Policy`) and list every reason:
   no suite may regress significantly (McNemar), and none may lose more than the margin
   of pass rate (non-inferiority: the lower 95 % bound of the change, lost knowledge
   counted as broken, stays above −margin; `stats.harm_bound`).

The stored report keeps held-out case ids; `checks_view` hides them (and their prompts)
from everyone but maintainers, who see counts and rates only otherwise.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from upstream.access import HUB
from upstream.comparisons import compare
from upstream.contributions import (
    FINAL,
    adapter_dir,
    get_contribution,
    set_state,
    store_adapter,
    stored_dataset,
)
from upstream.db.schema import Case, ContributionPush, Job, Model, Report, Suite
from upstream.errors import Conflict, InvalidInput, UpstreamError
from upstream.evals import Progress, answers
from upstream.guard import GUARD_MAX_NEW_TOKENS, ensure_guard_suite
from upstream.registry import materialize
from upstream.reports import prompt_text
from upstream.settings import Policy, policy_for
from upstream.stats import allowance, harm_passes, net_change
from upstream.suites import CaseIn, add_cases

if TYPE_CHECKING:
    from upstream.hub import Hub
    from upstream.jobs import JobContext

log = logging.getLogger(__name__)
ACTOR = "ci"


def run_checks_job(ctx: JobContext) -> dict[str, Any]:
    """Job handler for `contributions.check`."""
    return run_checks(ctx.hub, int(ctx.args["contribution"]), int(ctx.args["push"]), ctx.progress)


def abandon_checks(hub: Hub, job: Job) -> None:
    """A check whose worker stopped for good: the contribution goes back to open."""
    why = "checks stopped: their worker stopped and the job gave up"
    _back_to_open(hub, int(job.args["contribution"]), int(job.args["push"]), why)


def _back_to_open(hub: Hub, contribution_id: int, push_number: int, why: str) -> None:
    """A check that ended without a verdict: open again, to be checked again."""
    with hub.session() as s, s.begin():
        c = get_contribution(s, contribution_id)
        if c.state == "checking" and c.pushes[-1].number == push_number:
            set_state(s, c, "open", ACTOR, why)


def run_checks(
    hub: Hub, contribution_id: int, push_number: int, progress: Progress | None = None
) -> dict[str, Any]:
    """Check one push of a contribution; stores and returns the check report."""
    say = progress or (lambda done, total, message: None)
    with hub.session() as s, s.begin():
        c = get_contribution(s, contribution_id)
        if c.state in FINAL:
            raise Conflict(f"contribution {c.id} is {c.state}; it is not checked any more")
        if c.pushes[-1].number != push_number:
            raise Conflict(
                f"contribution {c.id}: push {push_number} was replaced by push "
                f"{c.pushes[-1].number}; check the newest"
            )
        set_state(s, c, "checking", ACTOR, f"push {push_number}")
        push = c.pushes[-1]
        model, base_ref = c.model.name, f"{c.model.name}@{c.revision.hash}"
        kind, recipe, files, fixes = c.kind, dict(c.recipe), dict(push.files), list(c.fixes)
        adapter_files = dict(push.adapter) if push.adapter else None
        revision = c.revision
    policy: Policy | None = None
    try:
        policy = policy_for(hub.settings, model)
        if adapter_files is None:  # a dataset: train the adapter first
            adapter_files, training = _train(hub, revision, files, recipe, say)
            with hub.session() as s, s.begin():
                row = _push(s, contribution_id, push_number)
                row.adapter, row.training = adapter_files, training
        candidate = adapter_dir(hub, adapter_files)
        suites = suites_to_check(hub, f"claims-pr-{contribution_id}", revision.model_id, fixes)
        results = [
            compare_on(hub, base_ref, base_ref, [candidate], suite, suite_kind, say)
            for suite, suite_kind in suites
        ]
        passed, reasons = judge(policy, results)
    except UpstreamError as e:  # bad content found while checking: a failed verdict
        passed, reasons, results = False, [f"✗ {e}"], []
    except BaseException:
        _back_to_open(hub, contribution_id, push_number, "checks crashed")
        raise
    report = {
        "push": push_number,
        "kind": kind,
        "policy": policy.as_dict() if policy else None,
        "passed": passed,
        "reasons": reasons,
        "suites": results,
    }
    verdict = "passed" if passed else "failed"
    with hub.session() as s, s.begin():
        row = _push(s, contribution_id, push_number)
        row.checks, row.verdict = report, verdict
        c = get_contribution(s, contribution_id)
        # not closed, rejected or re-pushed meanwhile (a newer push has its own check)
        if c.state == "checking" and c.pushes[-1].number == push_number:
            set_state(s, c, verdict, ACTOR, "; ".join(r for r in reasons if r.startswith("✗")))
    return {"contribution": contribution_id, "verdict": verdict, "reasons": reasons}


def judge(policy: Policy, results: list[dict[str, Any]]) -> tuple[bool, list[str]]:
    """The verdict under `policy`, with a line for every rule applied (✓ or ✗)."""
    reasons: list[str] = []
    claims = [r for r in results if r["kind"] == "claims"]
    if claims:
        fixed = claims[0]["splits"]["all"]["fixed_count"]
        n = claims[0]["splits"]["all"]["n"]
        ok = fixed >= policy.min_fixed
        reasons.append(
            f"{'✓' if ok else '✗'} fixes {fixed} of {n} claimed cases "
            f"(at least {policy.min_fixed} needed)"
        )
    else:
        fixed = sum(r["splits"]["all"]["fixed_count"] for r in results if r["kind"] == "community")
        ok = fixed >= policy.min_fixed
        reasons.append(
            f"{'✓' if ok else '✗'} claims no report; fixes {fixed} cases of the model's suites "
            f"(at least {policy.min_fixed} needed)"
        )
    passed = ok
    # Reasons are public: they name no held-out case, and a case held out in any suite is
    # held out in all (a case id names the same input everywhere).
    hidden = {i for r in results for i in r.get("heldout_ids", [])}
    for r in results:
        suite_ok, line = _suite_reason(policy, r, hidden)
        passed &= suite_ok
        reasons.append(line)
        held = r["splits"].get("heldout")
        if held:
            drop = held["base_rate"] - held["cand_rate"]
            low = drop > policy.heldout_margin + 1e-12
            passed &= not low
            reasons.append(
                f"{'✗' if low else '✓'} {r['suite']} held-out: pass rate "
                f"{held['base_rate']:.0%} → {held['cand_rate']:.0%} over {held['n']} cases "
                f"(may fall at most {policy.heldout_margin:.0%})"
            )
    return passed, reasons


def _suite_reason(policy: Policy, r: dict[str, Any], hidden: set[str]) -> tuple[bool, str]:
    """One suite under the regression and non-inferiority rules: (passed, its reason)."""
    d = r["splits"]["all"]
    broken, fixed, p = d["broken_count"], d["fixed_count"], d["p_value"]
    harm, lost = d["harm"], d["knowledge"]["lost_count"]
    regressed = broken > fixed and p < policy.regression_p
    n = d["n"]
    rule = allowance(n, policy.margin, policy.regression_p)
    inferior = not harm_passes(harm["low"], harm["fixed"], harm["broken"], n, rule, policy.margin)
    observed = net_change(harm["fixed"], harm["broken"], n)
    line = (
        f"{'✗' if regressed or inferior else '✓'} {r['suite']}: {fixed} fixed, {broken} "
        f"broken, knowledge lost on {lost}"
        + (f" (counted as broken: {harm['broken']} in all)" if harm["broken"] != broken else "")
        + f"; pass rate {d['base_rate']:.0%} → {d['cand_rate']:.0%} (McNemar p {p:.3g})"
    )
    if regressed:
        line += f": a significant regression (p < {policy.regression_p})"
    if rule.by_bound:
        line += f"; change ≥ {harm['low']:+.1%} (95 % bound), "
    else:
        line += f"; observed change {observed:+.1%} (95 % bound {harm['low']:+.1%}), "
    if inferior:
        line += f"beyond what the -{policy.margin:.0%} margin allows"
    elif harm["broken"] == 0:
        line += "nothing broken"
    else:
        line += f"within the -{policy.margin:.0%} margin"
    line += "; " + rule.describe(n, policy.margin)
    if regressed or inferior:
        shown = [*d["broken"], *(i for i in d["knowledge"]["lost"] if i not in d["broken"])]
        names = [r["cases"][i]["prompt"] for i in shown if i in r["cases"] and i not in hidden]
        if names:
            line += "; broken: " + "; ".join(f"“{_short(t)}”" for t in names[:8])
    return not (regressed or inferior), line


# ---------------------------------------------------------------- steps


def _train(
    hub: Hub, revision: Any, files: dict[str, Any], recipe: dict[str, Any], say: Progress
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train the push's dataset into an adapter; (adapter files, training record)."""
    from upstream.training import recipe_from, train_adapter

    conversations = stored_dataset(hub, files)
    chosen = recipe_from(recipe)
    base_dir = materialize(hub, revision)
    with tempfile.TemporaryDirectory(dir=hub.settings.work_dir) as tmp:
        out = Path(tmp) / "adapter"
        result = train_adapter(
            base_dir,
            conversations,
            chosen,
            out,
            lambda done, total, message: say(done, total, f"training: {message}"),
            functools.partial(answers, hub, revision),  # replayed answers cached
        )
        adapter = store_adapter(hub, out)
    training = {"recipe": dataclasses.asdict(chosen), **dataclasses.asdict(result)}
    return adapter, training


def suites_to_check(
    hub: Hub, claims_suite: str, model_id: int, fixes: list[int]
) -> list[tuple[str, str]]:
    """(suite, kind): the claims suite first, then the model's guard and community suites."""

    out: list[tuple[str, str]] = []
    with hub.session() as s:
        model_name = s.scalars(select(Model.name).where(Model.id == model_id)).one()
        claims: list[CaseIn] = []
        for r in s.scalars(select(Report).where(Report.id.in_(fixes)).order_by(Report.id)):
            for v in r.variants:
                check = v.expected or r.expected
                if check is not None:
                    claims.append(CaseIn(v.messages, check, [f"report-{r.id}"], r.id, "report"))
    if claims:
        with hub.session() as s:
            taken = s.scalar(select(Suite).where(Suite.name == claims_suite))
            if taken is not None and taken.kind != "claims":
                raise InvalidInput(
                    f"suite {claims_suite} exists and is not a claims suite; rename it, "
                    "the name is the hub's for this contribution's claimed cases"
                )
        add_cases(
            hub,
            claims_suite,
            claims,
            model_name,
            heldout_percent=0,
            note="claimed fixes",
            kind="claims",
        )
        out.append((claims_suite, "claims"))
    out.append((ensure_guard_suite(hub, model_name), "guard"))
    with hub.session() as s:
        for suite in s.scalars(
            select(Suite)
            .where(Suite.model_id == model_id, Suite.kind == "community")
            .order_by(Suite.name)
        ):
            if suite.versions:
                out.append((suite.name, "community"))
    return out


def compare_on(
    hub: Hub,
    base_ref: str,
    cand_ref: str,
    cand_adapters: list[Path],
    suite: str,
    kind: str,
    say: Progress,
) -> dict[str, Any]:
    """Base vs candidate (+ adapters) on one suite, with the prompts of the changed cases."""

    tokens = GUARD_MAX_NEW_TOKENS if kind == "guard" else hub.settings.check_max_new_tokens
    result = compare(
        hub,
        base_ref,
        cand_ref,
        suite,
        cand_adapters=cand_adapters,
        max_new_tokens=tokens,
        viewer=HUB,
        progress=lambda done, total, message: say(done, total, f"{suite}: {message}"),
    )
    splits = result["splits"]
    heldout_ids = sorted(_named(splits["heldout"])) if "heldout" in splits else []
    changed = {i for d in splits.values() for i in _named(d)}
    with hub.session() as s:
        cases = {
            c.id: {"prompt": prompt_text(c.messages), "report": c.report_id}
            for c in s.scalars(select(Case).where(Case.id.in_(changed)))
        }
    return {
        "suite": suite,
        "kind": kind,
        "version": result["version"],
        "max_new_tokens": tokens,
        "base_run": result["base"]["run"],
        "candidate_run": result["candidate"]["run"],
        "splits": splits,
        "heldout_ids": heldout_ids,
        "cases": cases,
    }


def _named(split: dict[str, Any]) -> set[str]:
    """The case ids a split of a comparison names: fixed, broken and knowledge lost."""
    return {*split["fixed"], *split["broken"], *split["knowledge"]["lost"]}


def _push(session: Any, contribution_id: int, number: int) -> ContributionPush:
    row = session.scalar(
        select(ContributionPush).where(
            ContributionPush.contribution_id == contribution_id,
            ContributionPush.number == number,
        )
    )
    assert row is not None
    return row


def _short(text: str, n: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"
