"""Contributions on the tiny model: opening, bad input, the CI, the verdict and review."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.people import owner, person
from upstream import contributions as prs
from upstream.access import Actor
from upstream.ci import Policy, judge, policy_for
from upstream.contributions import checks_view
from upstream.db.schema import Contribution, EvalRun
from upstream.errors import Conflict, Forbidden, InvalidInput, NotFound
from upstream.hub import Hub
from upstream.registry import import_model, materialize, resolve
from upstream.reports import parse_report, submit_one
from upstream.suites import list_suites
from upstream.triage import confirm

NEVER = {"type": "exact", "value": "this exact sentence will not be generated"}
DATASET = "\n".join(
    json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    for q, a in [("hi", "hello"), ("sky?", "blue"), ("grass?", "green"), ("snow?", "white")]
).encode()


def make_adapter(
    base_dir: Path, out: Path, seed: int = 0, targets: tuple[str, ...] = ("q_proj", "v_proj")
) -> Path:
    """A rank-4 LoRA on the attention projections, with non-zero B (so it changes outputs)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(targets)))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    peft_model.save_pretrained(out)
    return out


@pytest.fixture
def maintainer(tiny_hub: Hub) -> Actor:
    return owner(tiny_hub)


@pytest.fixture
def adapter(tiny_hub: Hub, tmp_path: Path) -> Path:
    with tiny_hub.session() as s:
        base = materialize(tiny_hub, resolve(s, "tiny"))
    return make_adapter(base, tmp_path / "adapter")


def report(hub: Hub, model: str = "tiny", prompt: str = "What is the capital of France?") -> int:
    data = {"model": model, "prompt": prompt, "expected": NEVER, "max_new_tokens": 4}
    return submit_one(hub, parse_report(data), person(hub, "ana", "reporter"), "cli").filed[0].id


def open_adapter(
    hub: Hub, adapter: Path, fixes: list[int] | None = None, author: Actor | None = None
) -> int:
    data = prs.ContributionIn("tiny", "a fix", prs.Content(adapter_dir=adapter), fixes or [])
    return prs.open_contribution(hub, data, author or person(hub, "bo"), attempts=1)["id"]


def check(hub: Hub, cid: int) -> dict[str, Any]:
    """Run the checks queued for the newest push (on open or push), once."""
    with hub.session() as s:
        job = prs.get_contribution(s, cid).pushes[-1].job_id
    assert job is not None
    hub.jobs.run_now(job)
    with hub.session() as s:
        return prs.contribution_detail(prs.get_contribution(s, cid), owner(hub))


def force(hub: Hub, cid: int, verdict: str) -> None:
    """As if the newest push's checks had given `verdict`."""
    with hub.session() as s, s.begin():
        c = prs.get_contribution(s, cid)
        c.state = c.pushes[-1].verdict = verdict


def count(hub: Hub) -> int:
    with hub.session() as s:
        return len(s.query(Contribution).all())


# ---------------------------------------------------------------- bad input


def test_fixes_must_name_checked_reports_of_the_same_model(
    tiny_hub: Hub, adapter: Path, tiny_model_dir: Path
) -> None:
    import_model(tiny_hub, str(tiny_model_dir), "other")
    theirs = report(tiny_hub, "other")
    with pytest.raises(InvalidInput, match=rf"report\(s\) {theirs} \(other\) are of another model"):
        open_adapter(tiny_hub, adapter, [theirs])
    with pytest.raises(NotFound, match="no report 999"):
        open_adapter(tiny_hub, adapter, [999])
    ana = person(tiny_hub, "ana", "reporter")
    unchecked = submit_one(tiny_hub, parse_report({"model": "tiny", "prompt": "x"}), ana, "cli")
    with pytest.raises(InvalidInput, match="have no check"):
        open_adapter(tiny_hub, adapter, [unchecked.filed[0].id])
    assert count(tiny_hub) == 0  # refused before anything was stored


def test_bad_content_is_refused_before_anything_runs(tiny_hub: Hub, tmp_path: Path) -> None:
    from tests.tiny_models import build_model

    neox = build_model(tmp_path / "neox", "gpt_neox")
    foreign = make_adapter(neox, tmp_path / "neox-adapter", targets=("query_key_value",))
    bo = person(tiny_hub, "bo")
    with pytest.raises(InvalidInput, match="does not exist in the base"):
        open_adapter(tiny_hub, foreign)
    bad = prs.Content(dataset=b'{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n')
    with pytest.raises(InvalidInput, match="line 1") as e:
        prs.open_contribution(tiny_hub, prs.ContributionIn("tiny", "t", bad), bo)
    assert "line 2" in str(e.value)  # every bad line named, not only the first
    with pytest.raises(InvalidInput, match="exactly one"):
        prs.open_contribution(tiny_hub, prs.ContributionIn("tiny", "t", prs.Content()), bo)
    with pytest.raises(InvalidInput, match="rank"):
        data = prs.ContributionIn("tiny", "t", prs.Content(dataset=DATASET), recipe={"rank": 0})
        prs.open_contribution(tiny_hub, data, bo)
    assert count(tiny_hub) == 0
    assert tiny_hub.jobs.list() == []


# ---------------------------------------------------------------- the CI and review


def test_adapter_is_checked_on_claims_guard_and_suites(
    tiny_hub: Hub, adapter: Path, maintainer: Actor
) -> None:
    from upstream.suites import CaseIn, add_cases

    rid = report(tiny_hub)
    confirm(tiny_hub, rid, maintainer)
    add_cases(
        tiny_hub,
        "community",
        [CaseIn([{"role": "user", "content": f"q{i}"}], NEVER, ["t"]) for i in range(12)],
        "tiny",
        heldout_percent=50,
    )
    cid = open_adapter(tiny_hub, adapter, [rid])
    detail = check(tiny_hub, cid)
    checks = detail["checks"]
    kinds = [(r["suite"], r["kind"]) for r in checks["suites"]]
    assert kinds == [
        (f"claims-pr-{cid}", "claims"),
        ("guard-tiny", "guard"),
        ("community", "community"),
    ]
    assert checks["passed"] == judge(Policy(1, 0.05, 0.05), checks["suites"])[0]
    claims = checks["suites"][0]["splits"]["all"]
    assert claims["n"] == 1 and claims["fixed_count"] == 0  # NEVER cannot be fixed
    assert checks["reasons"][0].startswith("✗ fixes 0 of 1 claimed cases")
    assert detail["state"] == "failed"
    with tiny_hub.session() as s:  # the claims suite stays out of listings
        assert [st.name for st in list_suites(s)] == ["community", "guard-tiny"]
    # the base's outputs are cached: a second contribution generates only its own
    second = open_adapter(tiny_hub, adapter, [rid])
    detail = check(tiny_hub, second)
    with tiny_hub.session() as s:
        runs = {r["suite"]: s.get(EvalRun, r["base_run"]) for r in detail["checks"]["suites"]}
    assert runs["community"].generated == 0 and runs["guard-tiny"].generated == 0


def test_review_rules(tiny_hub: Hub, adapter: Path, maintainer: Actor) -> None:
    bo, cy = person(tiny_hub, "bo"), person(tiny_hub, "cy")
    mia = person(tiny_hub, "mia", "maintainer")  # a maintainer who is no admin
    cid = open_adapter(tiny_hub, adapter, author=bo)
    with pytest.raises(Conflict, match="only a passed"):
        prs.approve(tiny_hub, cid, maintainer)  # not checked yet
    check(tiny_hub, cid)
    force(tiny_hub, cid, "passed")  # as if it had passed
    with pytest.raises(Forbidden, match="only a maintainer of tiny may approve"):
        prs.approve(tiny_hub, cid, cy)
    own = open_adapter(tiny_hub, adapter, author=maintainer)
    force(tiny_hub, own, "passed")
    with pytest.raises(Forbidden, match="may not approve their own work"):
        prs.approve(tiny_hub, own, maintainer)
    assert prs.approve(tiny_hub, cid, maintainer, "thanks")["state"] == "approved"
    with pytest.raises(Forbidden, match="only a maintainer of tiny or its owner may re-run"):
        prs.queue_checks(tiny_hub, cid, cy)
    with pytest.raises(Conflict, match="approved; its checks are not run again"):
        prs.queue_checks(tiny_hub, cid, bo)  # a re-check would silently drop the approval

    failed = open_adapter(tiny_hub, adapter)
    force(tiny_hub, failed, "failed")
    with pytest.raises(Conflict, match="written reason"):
        prs.approve(tiny_hub, failed, mia)
    prs.approve(tiny_hub, failed, mia, override="the guard case is flaky")
    with tiny_hub.session() as s:
        events = prs.contribution_detail(prs.get_contribution(s, failed), mia)["events"]
    assert any(
        e["kind"] == "overridden" and e["actor"] == "mia" and "flaky" in e["note"] for e in events
    )

    with pytest.raises(Forbidden, match="only a maintainer of tiny may reject"):
        prs.reject(tiny_hub, own, bo, "no")
    with pytest.raises(InvalidInput, match="say why"):
        prs.reject(tiny_hub, own, maintainer, " ")
    assert prs.reject(tiny_hub, own, maintainer, "out of scope")["state"] == "rejected"
    with pytest.raises(Conflict, match="rejected"):
        prs.push(tiny_hub, own, prs.Content(adapter_dir=adapter), maintainer)


def test_a_push_clears_the_approval_and_is_checked_again(
    tiny_hub: Hub, adapter: Path, maintainer: Actor, tmp_path: Path
) -> None:
    bo, cy = person(tiny_hub, "bo"), person(tiny_hub, "cy")
    cid = open_adapter(tiny_hub, adapter, author=bo)  # it claims nothing: its checks fail
    first = check(tiny_hub, cid)
    assert first["state"] == "failed"
    prs.approve(tiny_hub, cid, maintainer, override="a test of the push")
    with pytest.raises(Forbidden, match="or its owner may push to others' contributions"):
        prs.push(tiny_hub, cid, prs.Content(adapter_dir=adapter), cy)
    with pytest.raises(InvalidInput, match="push a adapter"):
        prs.push(tiny_hub, cid, prs.Content(dataset=DATASET), bo)
    with tiny_hub.session() as s:
        base = materialize(tiny_hub, resolve(s, "tiny"))
    second = make_adapter(base, tmp_path / "second", seed=1)
    pushed = prs.push(tiny_hub, cid, prs.Content(adapter_dir=second), bo, attempts=1)
    assert pushed == {"id": cid, "push": 2, "state": "open", "job": pushed["job"]}
    with tiny_hub.session() as s:
        c = prs.get_contribution(s, cid)
        events = [(e.kind, e.to_state) for e in c.events]
        assert c.pushes[-1].job_id == pushed["job"] != c.pushes[0].job_id  # queued anew
    assert events[-2:] == [("approved", "approved"), ("pushed", "open")]
    detail = check(tiny_hub, cid)
    assert detail["push"] == 2 and detail["checks"]["push"] == 2
    # checked again from scratch: the override of push 1 does not carry over
    assert (detail["state"], detail["verdict"], detail["checks"]["passed"]) == (
        "failed",
        "failed",
        False,
    )
    assert detail["checks"]["reasons"][0] == (
        "✗ claims no report; fixes 0 cases of the model's suites (at least 1 needed)"
    )
    with pytest.raises(Forbidden, match="or its owner may close"):
        prs.close(tiny_hub, cid, cy)
    assert prs.close(tiny_hub, cid, bo)["state"] == "closed"


def test_a_dataset_is_trained_then_checked(tiny_hub: Hub) -> None:
    data = prs.ContributionIn(
        "tiny", "colours", prs.Content(dataset=DATASET), recipe={"epochs": 1, "rank": 2}
    )
    cid = prs.open_contribution(tiny_hub, data, person(tiny_hub, "bo"), attempts=1)["id"]
    detail = check(tiny_hub, cid)
    training = detail["training"]
    # the 4 contributed examples and the base's own answers to twice as many ordinary prompts
    assert 0 < training["replayed"] <= 8 and training["examples"] == 4 + training["replayed"]
    assert training["recipe"]["rank"] == 2
    assert set(detail["adapter"]) == {"adapter_config.json", "adapter_model.safetensors"}
    assert detail["checks"]["suites"][0]["kind"] == "guard"
    # the trained adapter is usable by id, as `--adapter pr:N`
    path = prs.contribution_adapter(tiny_hub, f"pr:{cid}")
    assert (path / "adapter_model.safetensors").exists()


def test_replayed_answers_come_from_the_output_cache(
    tiny_hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The base's replayed answers are the hub's cached outputs: the same text the base
    loaded on its own gives, generated once and read from the cache by the check after."""
    from upstream import evals
    from upstream.engines.hf import HFEngine
    from upstream.training import replay_conversations

    with tiny_hub.session() as s:
        revision = resolve(s, "tiny")
    model_dir = materialize(tiny_hub, revision)
    alone = replay_conversations(model_dir, 8, 24, seed=0)
    generated: list[str] = []
    real = HFEngine.generate

    def spy(self: HFEngine, requests: Any, on_result: Any = None) -> Any:
        generated.extend(r.messages[-1]["content"] for r in requests)
        return real(self, requests, on_result)

    monkeypatch.setattr(HFEngine, "generate", spy)
    cached = replay_conversations(
        model_dir, 8, 24, seed=0, answer=lambda p, n: evals.answers(tiny_hub, revision, p, n)
    )
    assert cached == alone and len(generated) == 8
    prompts = [c.messages[0]["content"] for c in alone]
    assert set(prompts) <= set(generated)

    def trained(title: str) -> dict[str, Any]:
        data = prs.ContributionIn(
            "tiny", title, prs.Content(dataset=DATASET), recipe={"epochs": 1, "rank": 2}
        )
        cid = prs.open_contribution(tiny_hub, data, person(tiny_hub, "bo"), attempts=1)["id"]
        return check(tiny_hub, cid)["training"]

    # a stopped prefix cached for the same input and settings is replaced by the full
    # answer, which is then a full output (read by anyone) and served from the cache
    from upstream.db.schema import EvalOutput
    from upstream.suites import input_hash

    key = input_hash([{"role": "user", "content": prompts[0]}])
    with tiny_hub.session() as s, s.begin():
        row = s.scalars(select(EvalOutput).where(EvalOutput.input_hash == key)).one()
        row.output, row.stopped, row.error = row.output[:1], True, "an old failure"
    generated.clear()
    text, _ = evals.answers(tiny_hub, revision, prompts[:1], 24)[0]
    assert text.strip() == alone[0].messages[1]["content"]
    assert generated == prompts[:1]
    with tiny_hub.session() as s:
        row = s.scalars(select(EvalOutput).where(EvalOutput.input_hash == key)).one()
        assert (row.stopped, row.error) == (False, "")
    generated.clear()
    evals.answers(tiny_hub, revision, prompts[:1], 24)
    assert generated == []

    generated.clear()
    first = trained("colours")  # replays 8 prompts drawn by seed 0, as above: all cached
    assert first["replayed"] == len(alone)
    assert not set(prompts) & set(generated)  # the check generated only its suites' cases


# ---------------------------------------------------------------- verdict


POLICY = Policy(min_fixed=1, regression_p=0.05, heldout_margin=0.05, margin=0.10)


def suite(
    name: str,
    kind: str,
    fixed: int,
    broken: int,
    n: int,
    held: tuple[int, float, float] | None = None,  # (cases, base rate, candidate rate)
    lost: int = 0,
) -> dict:
    """A compared suite as `compare_on` gives it: `fixed` and `broken` of `n` cases, and
    `lost` more whose answer the base stated in the wrong form and the candidate lost."""
    from upstream.comparisons import compare_split

    def split(base: list[str], cand: list[str], ids: list[str], knew: list[str]) -> dict:
        return compare_split(
            {i: i in base for i in ids},
            {i: i in cand for i in ids},
            {},
            {i: i in knew for i in ids},
            {i: i in cand for i in ids},
            POLICY,
        )

    f, b, k = (
        [f"f{i}" for i in range(fixed)],
        [f"b{i}" for i in range(broken)],
        [f"l{i}" for i in range(lost)],
    )
    same = [f"s{i}" for i in range(n - fixed - broken - lost)]
    passing = same[: len(same) // 2]  # half of the unchanged cases pass under both
    ids = f + b + k + same
    splits = {"all": split(b + passing, f + passing, ids, b + k + passing)}
    if held:
        h = [f"h{i}" for i in range(held[0])]
        splits["heldout"] = split(
            h[: round(held[1] * held[0])], h[: round(held[2] * held[0])], h, []
        )
    cases = {i: {"prompt": f"prompt {i}", "report": None} for i in b + k}
    return {"suite": name, "kind": kind, "splits": splits, "cases": cases, "heldout_ids": []}


def test_judge_lists_every_rule() -> None:
    ok, reasons = judge(
        POLICY,
        [
            suite("claims-pr-1", "claims", 3, 0, 4),
            suite("guard-m", "guard", 0, 1, 48),
            suite("caps", "community", 2, 0, 10, (4, 0.5, 0.5)),
        ],
    )
    assert ok, reasons
    assert reasons[0] == "✓ fixes 3 of 4 claimed cases (at least 1 needed)"
    assert len(reasons) == 5 and all(r.startswith("✓") for r in reasons)
    assert reasons[2] == (
        "✓ guard-m: 0 fixed, 1 broken, knowledge lost on 1; pass rate 50% → 48% (McNemar p 1)"
        "; change ≥ -7.5% (95 % bound), within the -10% margin; with 48 cases this suite lets "
        "through at most 1 broken"
    )
    # 10 cases cannot resolve a 10 % margin: judged by the observed change
    assert "observed change +20.0% (95 % bound -10.0%), nothing broken" in reasons[3]
    assert reasons[3].endswith(
        "with 10 cases this suite cannot resolve a 10% margin, so it is judged by its "
        "observed change and lets through at most 1 broken"
    )

    ok, reasons = judge(POLICY, [suite("guard-m", "guard", 0, 9, 20)])
    assert not ok
    assert reasons[0].startswith("✗ claims no report; fixes 0 cases")
    assert "significant regression" in reasons[1] and "prompt b0" in reasons[1]

    ok, reasons = judge(POLICY, [suite("caps", "community", 2, 0, 10, (10, 0.6, 0.5))])
    assert not ok and reasons[-1].startswith("✗ caps held-out: pass rate 60% → 50%")
    ok, _ = judge(Policy(1, 0.05, 0.1), [suite("c", "community", 2, 0, 10, (10, 0.6, 0.5))])
    assert ok  # within a 10-point margin


def test_a_suite_may_lose_at_most_the_margin() -> None:
    # 4 broken of 24 guard cases: McNemar p 0.125 is no significant regression, but the
    # pass rate may have fallen by up to 32 points
    ok, reasons = judge(POLICY, [suite("claims", "claims", 1, 0, 1), suite("g", "guard", 0, 4, 24)])
    assert not ok
    line = reasons[2]
    assert line.startswith("✗ g: 0 fixed, 4 broken, knowledge lost on 4; pass rate 58% → 42%")
    # 24 cases cannot tell one broken case from none at 10 %: the observed change decides,
    # and such a suite never lets more than one net broken case through
    assert (
        "(McNemar p 0.125); observed change -16.7% (95 % bound -31.9%), beyond what the -10% "
        "margin allows; with 24 cases this suite cannot resolve a 10% margin"
    ) in line
    assert "significant regression" not in line and "prompt b3" in line
    assert judge(POLICY, [suite("claims", "claims", 1, 0, 1), suite("g", "guard", 0, 1, 24)])[0]
    assert not judge(POLICY, [suite("claims", "claims", 1, 0, 1), suite("g", "guard", 0, 2, 24)])[0]
    # 48 cases: one broken passes, two fail
    assert judge(POLICY, [suite("claims", "claims", 1, 0, 1), suite("g", "guard", 0, 1, 48)])[0]
    assert not judge(POLICY, [suite("claims", "claims", 1, 0, 1), suite("g", "guard", 0, 2, 48)])[0]
    # a wider margin lets the 4 of 24 through
    wide = Policy(1, 0.05, 0.05, margin=0.35)
    assert judge(wide, [suite("claims", "claims", 1, 0, 1), suite("g", "guard", 0, 4, 24)])[0]


def test_lost_knowledge_counts_as_broken() -> None:
    claims = suite("claims", "claims", 1, 0, 1)
    # no case broken by the strict checks, but two answers the base knew are gone
    ok, reasons = judge(POLICY, [claims, suite("g", "guard", 0, 0, 48, lost=2)])
    assert not ok
    assert reasons[2].startswith(
        "✗ g: 0 fixed, 0 broken, knowledge lost on 2 (counted as broken: 2 in all); pass rate"
    )
    assert "beyond what the -10% margin allows" in reasons[2] and "prompt l1" in reasons[2]
    # the plain figures stay strict: no McNemar regression, no broken ids
    d = suite("g", "guard", 0, 0, 48, lost=2)["splits"]["all"]
    assert (d["broken_count"], d["p_value"], d["harm"]["broken"]) == (0, 1.0, 2)
    assert judge(POLICY, [claims, suite("g", "guard", 0, 0, 48, lost=1)])[0]


def test_reasons_never_name_a_heldout_case() -> None:
    policy = Policy(min_fixed=0, regression_p=0.05, heldout_margin=0.05)
    regressed = suite("caps", "community", 0, 6, 20, lost=2)  # McNemar p 0.03
    regressed["heldout_ids"] = ["b0", "l0"]  # "prompt b0" and "prompt l0" are held out
    _, reasons = judge(policy, [regressed])
    assert "prompt b1" in reasons[1] and "prompt l1" in reasons[1]
    assert "prompt b0" not in reasons[1] and "prompt l0" not in reasons[1]
    # held out in another suite of the report is held out here too
    claims = suite("claims-pr-1", "claims", 0, 4, 30)
    _, reasons = judge(policy, [claims, regressed])
    assert "prompt b0" not in reasons[1] and "prompt b1" in reasons[1]


def seed_outputs(hub: Hub, ref: str, answers: dict[str, str], max_new_tokens: int) -> None:
    """Canned outputs: `answers` (prompt → text) stored as `ref`'s cached outputs, so an
    evaluation scores them without generating."""
    from upstream.db.schema import EvalOutput
    from upstream.evals import settings_of, subject_of
    from upstream.suites import input_hash

    _, settings_hash = settings_of(max_new_tokens)
    with hub.session() as s, s.begin():
        _, subject_hash = subject_of(resolve(s, ref))
        for prompt, text in answers.items():
            s.add(
                EvalOutput(
                    subject_hash=subject_hash,
                    input_hash=input_hash([{"role": "user", "content": prompt}]),
                    settings_hash=settings_hash,
                    output=text,
                )
            )


def prompt_in(hub: Hub, split: str, stem: str) -> str:
    """The first "STEM #i" whose case lands in `split` of a suite of `hub` holding out 50 %."""
    from upstream.suites import input_hash, split_key, split_of, split_secret

    with hub.session() as s:
        secret = split_secret(s)
    for i in itertools.count():
        prompt = f"{stem} #{i}"
        key = split_key(None, input_hash([{"role": "user", "content": prompt}]))
        if split_of(key, 50, secret) == split:
            return prompt
    raise AssertionError("unreachable")


def test_compare_counts_knowledge_kept_and_lost_and_the_ci_counts_it_as_broken(
    tiny_hub: Hub, tmp_path: Path
) -> None:
    from tests.tiny_models import build_model
    from upstream.ci import compare_on
    from upstream.comparisons import compare
    from upstream.suites import CaseIn, add_cases, get_version, version_cases

    import_model(tiny_hub, str(build_model(tmp_path / "other", "llama", seed=7)), "other")
    eight = {"type": "exact", "value": "8"}
    rows = [  # (name, split, check, the base's answer, the candidate's answer)
        ("kept", "public", eight, "A spider has eight legs (8) because...", "8"),
        ("lost", "public", eight, "It has 8 legs, like every spider.", "6"),
        ("lost-held", "heldout", eight, "It has 8 legs, like every spider.", "6"),
        ("broken", "public", eight, "8", "6"),
        ("learned", "public", {"type": "exact", "value": "Paris"}, "I do not know.", "Paris"),
        ("neither", "public", {"type": "number", "value": 4}, "many", "lots"),
        ("no-answer", "public", {"type": "max_words", "value": 3}, "ok", "ok"),
    ]
    prompts = {name: prompt_in(tiny_hub, split, f"question {name}") for name, split, *_ in rows}
    tokens = tiny_hub.settings.check_max_new_tokens  # what compare_on generates
    seed_outputs(tiny_hub, "tiny", {prompts[r[0]]: r[3] for r in rows}, tokens)
    seed_outputs(tiny_hub, "other", {prompts[r[0]]: r[4] for r in rows}, tokens)
    add_cases(
        tiny_hub,
        "facts",
        [CaseIn([{"role": "user", "content": prompts[r[0]]}], r[2], ["t"]) for r in rows],
        "tiny",
        heldout_percent=50,
    )
    with tiny_hub.session() as s:
        by_prompt = {
            c.messages[0]["content"]: c.id for c in version_cases(s, get_version(s, "facts"))
        }
    case = {name: by_prompt[prompt] for name, prompt in prompts.items()}

    result = compare(
        tiny_hub, "tiny", "other", "facts", max_new_tokens=tokens, viewer=owner(tiny_hub)
    )
    assert result["base"]["generated"] == result["candidate"]["generated"] == 0
    d = result["splits"]["all"]
    assert d["knowledge"] == {
        "n": 6,  # max_words states no answer
        "knew": 4,
        "kept": 1,
        "lost": sorted([case["lost"], case["lost-held"], case["broken"]]),
        "lost_count": 3,
        "learned": 1,
        "neither": 1,
    }
    # fixed, broken and McNemar stay strict; the harm pairing counts the lost knowledge
    assert d["fixed"] == sorted([case["kept"], case["learned"]])
    assert d["broken"] == [case["broken"]]
    assert (d["harm"]["broken"], d["harm"]["fixed"]) == (3, 1)
    # 5 cases cannot resolve 10 %: the observed change decides, and no net broken passes
    assert d["harm"]["margin"] == 0.10
    assert (d["harm"]["resolvable"], d["harm"]["by_bound"]) == (0, False)
    assert result["splits"]["heldout"]["knowledge"]["lost"] == [case["lost-held"]]

    bo = person(tiny_hub, "bo")  # a contributor: may compare, may not see held-out cases
    hidden = compare(tiny_hub, "tiny", "other", "facts", max_new_tokens=tokens, viewer=bo)
    hidden = hidden["splits"]
    assert hidden["all"]["knowledge"]["lost"] == sorted([case["lost"], case["broken"]])
    assert hidden["all"]["knowledge"]["lost_count"] == 3
    assert hidden["heldout"]["knowledge"] == {
        **d["knowledge"],
        **{"n": 1, "knew": 1, "kept": 0, "lost": [], "lost_count": 1, "learned": 0, "neither": 0},
    }

    checked = compare_on(tiny_hub, "tiny", "tiny", [], "facts", "community", lambda *a: None)
    assert checked["splits"]["all"]["knowledge"]["lost_count"] == 0  # the same subject
    checked = compare_on(tiny_hub, "tiny", "other", [], "facts", "community", lambda *a: None)
    assert checked["heldout_ids"] == [case["lost-held"]]
    ok, reasons = judge(policy_for(tiny_hub.settings, "tiny"), [checked])
    assert not ok
    line = reasons[1]
    assert line.startswith(
        "✗ facts: 2 fixed, 1 broken, knowledge lost on 3 (counted as broken: 3 in all)"
    )
    assert "beyond what the -10% margin allows" in line
    assert f"“{prompts['broken']}”" in line and f"“{prompts['lost']}”" in line
    assert prompts["lost-held"] not in line  # reasons are public
    view = checks_view({"suites": [checked]}, can_see_heldout=False)
    assert case["lost-held"] not in json.dumps(view) and prompts["lost-held"] not in json.dumps(
        view
    )


def test_heldout_cases_are_counts_only_for_others() -> None:
    report = {
        "suites": [
            {
                "suite": "caps",
                "splits": {
                    "all": {
                        "fixed": ["h1", "p1"],
                        "broken": [],
                        "knowledge": {"lost": ["h2", "p2"], "lost_count": 2},
                    },
                    "heldout": {
                        "fixed": ["h1"],
                        "broken": [],
                        "knowledge": {"lost": ["h2"], "lost_count": 1},
                    },
                },
                "cases": {
                    "h1": {"prompt": "secret"},
                    "p1": {"prompt": "public"},
                    "h2": {"prompt": "secret too"},
                    "p2": {"prompt": "public too"},
                },
                "heldout_ids": ["h1", "h2"],
            },
            {  # a claimed report's case that the suite above holds out
                "suite": "claims-pr-1",
                "splits": {"all": {"fixed": ["h1"], "broken": []}},
                "cases": {"h1": {"prompt": "secret"}},
                "heldout_ids": [],
            },
        ]
    }
    view = checks_view(report, can_see_heldout=False)
    assert "secret" not in json.dumps(view) and "h1" not in json.dumps(view)
    assert "h2" not in json.dumps(view)
    assert view["suites"][0]["splits"]["all"]["knowledge"] == {"lost": ["p2"], "lost_count": 2}
    assert view["suites"][0]["heldout_hidden"] is True
    assert checks_view(report, can_see_heldout=True) == report


def test_policy_from_settings_and_overrides(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(
        "policy_heldout_margin = 0.1\n[policy.m]\nmin_fixed = 3\nmargin = 0.2\n"
        "[policy.bad]\nfixed = 1\n"
    )
    hub = Hub.open(home)
    assert policy_for(hub.settings, "m") == Policy(3, 0.05, 0.1, margin=0.2)
    assert policy_for(hub.settings, "other") == Policy(1, 0.05, 0.1)
    with pytest.raises(InvalidInput, match="unknown key"):
        policy_for(hub.settings, "bad")
    hub.close()
