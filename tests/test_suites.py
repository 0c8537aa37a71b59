"""Suites, incremental evaluation, comparisons and the leaderboard, on the tiny model."""

import json
from pathlib import Path

import pytest

from tests.people import owner, person
from upstream import reports, suites
from upstream.db.schema import EvalOutput
from upstream.engines.base import GenResult
from upstream.errors import Forbidden, InvalidInput, NotFound, Unauthorized
from upstream.evals import run_eval
from upstream.hub import Hub
from upstream.triage import confirm

NEVER = {"type": "exact", "value": "this exact sentence will not be generated"}
ALWAYS = {"type": "max_words", "value": 10_000}


def cases(n: int, check: dict, tag: str = "t", start: int = 0) -> list[suites.CaseIn]:
    return [
        suites.CaseIn([{"role": "user", "content": f"question number {i}"}], check, [tag])
        for i in range(start, start + n)
    ]


def test_case_ids_versions_and_stable_split(tiny_hub: Hub) -> None:
    first = suites.add_cases(tiny_hub, "s", cases(20, NEVER), "tiny")
    assert (first["version"], first["added"], first["cases"]) == (1, 20, 20)
    same = suites.add_cases(tiny_hub, "s", cases(20, NEVER))
    assert (same["version"], same["added"]) == (1, 0)  # nothing new, no new version
    more = suites.add_cases(tiny_hub, "s", cases(5, NEVER, start=20))
    assert (more["version"], more["cases"]) == (2, 25)
    with tiny_hub.session() as s:
        v1, v2 = (suites.get_version(s, "s", n) for n in (1, 2))
        assert v2.case_ids[:20] == v1.case_ids  # v1 stays frozen
        v2_cases = suites.version_cases(s, v2)
        key = suites.split_secret(s)
        splits = [suites.case_split(c, 30, key) for c in v2_cases]
    assert key  # the hub's secret (tests fix it; a new hub makes its own, test_migrations)
    assert 0 < splits.count("heldout") < 25
    assert splits == [suites.case_split(c, 30, key) for c in v2_cases]  # stable
    a = suites.case_id([{"role": "user", "content": "x"}], NEVER)
    assert a == suites.case_id([{"role": "user", "content": "x"}], NEVER)
    assert a != suites.case_id([{"role": "user", "content": "x"}], ALWAYS)


def test_build_from_confirmed_reports_links_each_variant(tiny_hub: Hub) -> None:
    data = {
        "model": "tiny",
        "prompt": "What is the capital of France?",
        "expected": NEVER,
        "tags": ["capitals"],
        "variants": ["France's capital?"],
        "max_new_tokens": 4,
    }
    ana = person(tiny_hub, "ana", "reporter")
    filed = reports.submit_one(tiny_hub, reports.parse_report(data), ana, "cli").filed[0]
    mia = person(tiny_hub, "mia", "maintainer", model="tiny")
    with pytest.raises(InvalidInput, match="no confirmed report with tag"):
        suites.build_from_reports(tiny_hub, mia, "caps", "capitals", model="tiny")
    confirm(tiny_hub, filed.id, owner(tiny_hub))
    with pytest.raises(Forbidden, match="only a maintainer of tiny may build"):
        suites.build_from_reports(tiny_hub, person(tiny_hub, "bo"), "caps", "capitals", "tiny")
    built = suites.build_from_reports(tiny_hub, mia, "caps", "capitals", model="tiny")
    assert (built["cases"], built["reports"]) == (2, 1)
    with tiny_hub.session() as s:
        v = suites.get_version(s, "caps")
        built_cases = suites.version_cases(s, v)
        assert {c.report_id for c in built_cases} == {filed.id}
        # a report's variants share a side of the split, whatever the percentage
        for percent in range(0, 100, 7):
            key = suites.split_secret(s)
            assert len({suites.case_split(c, percent, key) for c in built_cases}) == 1


def test_eval_is_incremental_and_rescoring_generates_nothing(
    tiny_hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # full outputs: any later check can read them (an output stopped at its verdict
    # serves only checks it decides; tests/test_early_verdicts.py)
    suites.add_cases(tiny_hub, "s", cases(12, NEVER), "tiny")
    first = run_eval(tiny_hub, "tiny", "s", max_new_tokens=4, full_outputs=True)
    assert first["generated"] == 12 and first["metrics"]["all"]["rate"] == 0.0
    assert first["metrics"]["outputs"]["stopped_at_verdict"] == 0
    suites.add_cases(tiny_hub, "s", cases(3, NEVER, start=12))
    second = run_eval(tiny_hub, "tiny", "s", max_new_tokens=4, full_outputs=True)
    assert second["generated"] == 3 and second["metrics"]["all"]["n"] == 15

    from upstream.engines import hf

    def no_generation(*args: object, **kwargs: object) -> None:
        raise AssertionError("must not generate")

    monkeypatch.setattr(hf.HFEngine, "generate", no_generation)
    # the same inputs with a new check: a new case, scored from cached outputs
    suites.add_cases(tiny_hub, "s2", cases(15, ALWAYS), "tiny")
    rescored = run_eval(tiny_hub, "tiny", "s2", max_new_tokens=4)
    assert rescored["generated"] == 0 and rescored["metrics"]["all"]["rate"] == 1.0


class Killed(BaseException):
    """Stands for the process being killed: nothing in the run may catch it."""


def test_a_killed_run_resumes_from_written_outputs(
    tiny_hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    from upstream import evals
    from upstream.engines.base import GenRequest, ResultFn
    from upstream.engines.hf import HFEngine

    suites.add_cases(tiny_hub, "s", cases(10, NEVER), "tiny")
    monkeypatch.setattr(evals, "STORE_EVERY", 4)
    real = HFEngine.generate
    asked: list[int] = []

    def killed_after_six(
        self: HFEngine, requests: list[GenRequest], on_result: ResultFn | None = None
    ) -> list[GenResult]:
        asked.append(len(requests))
        seen = 0

        def counting(i: int, result: GenResult) -> None:
            nonlocal seen
            assert on_result is not None
            on_result(i, result)
            seen += 1
            if seen == 6 and len(asked) == 1:
                raise Killed

        return real(self, requests, counting)

    monkeypatch.setattr(HFEngine, "generate", killed_after_six)
    with pytest.raises(Killed):
        run_eval(tiny_hub, "tiny", "s", max_new_tokens=4)
    with tiny_hub.session() as s:  # stored 4 at a time: the 2 not yet stored are lost
        assert s.query(EvalOutput).count() == 4
    resumed = run_eval(tiny_hub, "tiny", "s", max_new_tokens=4)
    assert asked == [10, 6] and resumed["generated"] == 6
    with tiny_hub.session() as s:
        assert s.query(EvalOutput).count() == 10


def test_split_filter_and_errors(tiny_hub: Hub) -> None:
    suites.add_cases(tiny_hub, "s", cases(20, NEVER), "tiny")
    public = run_eval(tiny_hub, "tiny", "s", split="public", max_new_tokens=2)
    heldout = run_eval(tiny_hub, "tiny", "s", split="heldout", max_new_tokens=2)
    assert public["metrics"]["all"]["n"] + heldout["metrics"]["all"]["n"] == 20
    with pytest.raises(InvalidInput, match="split 'secret'"):
        run_eval(tiny_hub, "tiny", "s", split="secret")
    with pytest.raises(NotFound, match="unknown suite 'nope'"):
        run_eval(tiny_hub, "tiny", "nope")
    with pytest.raises(NotFound, match="no version 9"):
        run_eval(tiny_hub, "tiny", "s", version=9)


def test_a_case_that_cannot_be_scored_is_an_error_not_a_crash(tiny_hub: Hub) -> None:
    from upstream.db.schema import Case

    suites.add_cases(tiny_hub, "s", cases(3, NEVER), "tiny")
    with tiny_hub.session() as s, s.begin():
        case = s.get(Case, suites.get_version(s, "s").case_ids[0])
        assert case is not None
        case.expected = {"type": "regex", "pattern": "("}  # damaged after the fact
    result = run_eval(tiny_hub, "tiny", "s", max_new_tokens=2)
    assert result["metrics"]["all"]["errors"] == 1 and result["metrics"]["all"]["n"] == 3


def test_compare_lists_fixed_and_broken_and_hides_heldout_ids(
    tiny_hub: Hub, tmp_path: Path
) -> None:
    from tests.tiny_models import build_model
    from upstream.comparisons import compare, leaderboard
    from upstream.engines.base import GenRequest
    from upstream.engines.hf import HFEngine
    from upstream.registry import import_model, resolve

    import_model(tiny_hub, str(build_model(tmp_path / "other", "llama", seed=7)), "other")
    prompts = [f"question number {i}" for i in range(16)]
    outs = {}
    with tiny_hub.session() as s:
        for name in ("tiny", "other"):
            engine = HFEngine.for_revision(tiny_hub, resolve(s, name))
            outs[name] = [
                r.text
                for r in engine.generate(
                    [GenRequest.from_prompt(p, max_new_tokens=3) for p in prompts]
                )
            ]
    assert all(a != b for a, b in zip(outs["tiny"], outs["other"], strict=True))
    # the first half expects the base's answers (the candidate breaks them), the second
    # half the candidate's (it fixes them)
    case_list = [
        suites.CaseIn(
            [{"role": "user", "content": p}],
            {"type": "exact", "value": outs["tiny" if i < 8 else "other"][i], "strict": True},
            ["t"],
        )
        for i, p in enumerate(prompts)
    ]
    suites.add_cases(tiny_hub, "s", case_list, "tiny")
    with tiny_hub.session() as s:
        ids = suites.get_version(s, "s").case_ids
        heldout = {
            c.id
            for c in suites.version_cases(s, suites.get_version(s, "s"))
            if suites.case_split(c, 30, suites.split_secret(s)) == "heldout"
        }
    assert heldout and len(heldout) < 16

    maintainer = person(tiny_hub, "mia", "maintainer")
    contributor = person(tiny_hub, "bo", "contributor")
    with pytest.raises(Unauthorized, match="sign in to run evaluations"):
        compare(tiny_hub, "tiny", "other", "s", max_new_tokens=3)  # anonymous by default
    full = compare(tiny_hub, "tiny", "other", "s", max_new_tokens=3, viewer=maintainer)
    d = full["splits"]["all"]
    assert d["fixed"] == sorted(ids[8:]) and d["broken"] == sorted(ids[:8])
    assert (d["base_rate"], d["cand_rate"], d["p_value"]) == (0.5, 0.5, 1.0)
    hidden = compare(tiny_hub, "tiny", "other", "s", max_new_tokens=3, viewer=contributor)[
        "splits"
    ]["all"]
    assert hidden["fixed_count"] == 8 and not set(hidden["fixed"]) & heldout
    assert len(hidden["fixed"]) + len(hidden["broken"]) == 16 - len(heldout)

    same = compare(tiny_hub, "tiny", "tiny", "s", max_new_tokens=3, viewer=contributor)["splits"][
        "all"
    ]
    assert same["fixed"] == same["broken"] == [] and same["p_value"] == 1.0
    board = leaderboard(tiny_hub, "s")
    assert {r["model"] for r in board} == {"tiny", "other"}
    assert all(r["all"]["rate"] == 0.5 for r in board)
    assert json.dumps(board)


def test_a_model_without_chat_template_is_refused(
    hub: Hub, tiny_model_dir: Path, tmp_path: Path
) -> None:
    import shutil

    from upstream.registry import import_model

    plain = tmp_path / "plain"
    shutil.copytree(tiny_model_dir, plain)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    import_model(hub, str(plain), "plain")
    suites.add_cases(hub, "s", cases(2, NEVER), "plain")
    with pytest.raises(InvalidInput, match="has no chat template"):
        run_eval(hub, "plain", "s", max_new_tokens=2)


def test_an_output_that_failed_is_generated_again(tiny_hub: Hub) -> None:
    from upstream.db.schema import EvalOutput

    suites.add_cases(tiny_hub, "s", cases(3, NEVER), "tiny")
    run_eval(tiny_hub, "tiny", "s", max_new_tokens=2)
    with tiny_hub.session() as s, s.begin():
        first = s.query(EvalOutput).first()
        assert first is not None
        first.error, first.output = "server hiccup", ""
    again = run_eval(tiny_hub, "tiny", "s", max_new_tokens=2)
    assert again["generated"] == 1 and again["metrics"]["all"]["errors"] == 0


def test_a_run_that_crashes_is_marked_failed(
    tiny_hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    from upstream import evals
    from upstream.db.schema import EvalRun

    suites.add_cases(tiny_hub, "s", cases(3, NEVER), "tiny")

    def crash(*args: object, **kwargs: object) -> int:
        raise RuntimeError("killed")

    monkeypatch.setattr(evals, "_generate", crash)
    with pytest.raises(RuntimeError):
        run_eval(tiny_hub, "tiny", "s", max_new_tokens=2)
    with tiny_hub.session() as s:
        assert [r.state for r in s.query(EvalRun)] == ["failed"]


def test_concurrent_additions_to_one_suite_both_land(tiny_hub: Hub) -> None:
    import threading

    barrier = threading.Barrier(2)
    results: list[dict] = []

    def add(start: int) -> None:
        barrier.wait()
        results.append(suites.add_cases(tiny_hub, "race", cases(5, NEVER, start=start), "tiny"))

    threads = [threading.Thread(target=add, args=(s,)) for s in (0, 100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r["version"] for r in results) == [1, 2]
    with tiny_hub.session() as s:
        assert len(suites.get_version(s, "race").case_ids) == 10


def count_engine_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many requests each `HFEngine.generate` call gets, from now on."""
    from upstream.engines.hf import HFEngine

    real = HFEngine.generate
    batches: list[int] = []

    def counting(self: HFEngine, requests: list, on_result=None):  # type: ignore[no-untyped-def]
        batches.append(len(requests))
        return real(self, requests, on_result)

    monkeypatch.setattr(HFEngine, "generate", counting)
    return batches


def test_a_case_the_engine_refuses_leaves_the_others_in_one_batch(
    tiny_hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    too_long = suites.CaseIn([{"role": "user", "content": "x" * 40_000}], NEVER, ["t"])
    suites.add_cases(tiny_hub, "s", [*cases(5, NEVER), too_long], "tiny")
    batches = count_engine_calls(monkeypatch)
    result = run_eval(tiny_hub, "tiny", "s", max_new_tokens=4)
    assert batches == [5]  # the five good cases together, not one by one
    assert result["generated"] == 6 and result["metrics"]["all"]["errors"] == 1
    with tiny_hub.session() as s:
        [bad] = s.query(EvalOutput).filter(EvalOutput.error != "").all()
    assert "InvalidInput" in bad.error and "40000" in bad.error


def test_a_failure_to_store_outputs_fails_the_run_not_a_case(
    tiny_hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    from upstream import evals

    suites.add_cases(tiny_hub, "s", cases(6, NEVER), "tiny")
    monkeypatch.setattr(evals, "STORE_EVERY", 2)

    def locked(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("database is locked")

    batches = count_engine_calls(monkeypatch)
    monkeypatch.setattr(evals, "_store_outputs", locked)
    with pytest.raises(RuntimeError, match="database is locked"):
        run_eval(tiny_hub, "tiny", "s", max_new_tokens=4)
    assert batches == [6]  # not taken for a bad case and retried one by one
