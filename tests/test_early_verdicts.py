"""Generation that stops once its checks' verdicts are certain: same verdicts as full
outputs, fewer tokens, and a stopped output reused only by checks it decides."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select

from tests.engines.test_hf import PROMPTS
from tests.test_cli import upstream
from tests.tiny_models import FAMILIES, build_model
from upstream import suites
from upstream.checks import Check, decided, parse_check
from upstream.db.schema import EvalOutput, EvalResult
from upstream.engines.base import GenRequest
from upstream.engines.hf import HFEngine, load_from_dir
from upstream.evals import run_eval
from upstream.hub import Hub

TOKENS = 24


def checks_for(full: str) -> list[dict[str, Any]]:
    """Checks about an output, several of them decided long before its end."""
    words = full.split()
    return [
        {"type": "max_words", "value": 1},
        {"type": "exact", "value": "Paris"},
        {"type": "contains", "values": [words[1] if len(words) > 1 else "zzz"]},
        {"type": "not_contains", "values": [words[2] if len(words) > 2 else "zzz"]},
        {"type": "min_words", "value": 3},
        {
            "type": "any_of",
            "checks": [
                {"type": "one_of", "values": ["yes", "no"]},
                {"type": "regex", "pattern": "^x"},
            ],
        },
    ]


@pytest.fixture(scope="module", params=FAMILIES)
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> HFEngine:
    loaded = load_from_dir(build_model(tmp_path_factory.mktemp(request.param), request.param))
    return HFEngine(loaded, batch_size=4)


def test_rows_stop_at_their_verdict_with_the_verdicts_of_full_outputs(engine: HFEngine) -> None:
    full = engine.generate([GenRequest.from_prompt(p, max_new_tokens=TOKENS) for p in PROMPTS])
    for spec_index in range(len(checks_for(""))):
        checks: list[Check] = [parse_check(checks_for(f.text)[spec_index]) for f in full]

        def until(check: Check) -> Any:
            return lambda text: decided(check, text) is not None

        early = engine.generate(
            [
                GenRequest.from_prompt(p, max_new_tokens=TOKENS, until=until(c))
                for p, c in zip(PROMPTS, checks, strict=True)
            ]
        )
        for e, f, check in zip(early, full, checks, strict=True):
            assert f.text.startswith(e.text)  # a prefix of what full generation gives
            assert e.token_ids == f.token_ids[: len(e.token_ids)]
            assert check.score(e.text).passed == check.score(f.text).passed, (e.text, f.text)
            if e.finish_reason == "verdict":
                assert decided(check, e.text) is not None
                assert len(e.token_ids) < len(f.token_ids)
            else:
                assert e.token_ids == f.token_ids
        if spec_index == 0:  # max_words 1 is decided by the third word of a long output
            assert sum(e.finish_reason == "verdict" for e in early) >= 3
            assert sum(e.completion_tokens for e in early) < sum(f.completion_tokens for f in full)


def _results(hub: Hub, run: int) -> dict[str, bool]:
    with hub.session() as s:
        rows = s.scalars(select(EvalResult).where(EvalResult.run_id == run))
        return {r.case_id: r.passed for r in rows}


def _cases(check: dict[str, Any], n: int = 8) -> list[suites.CaseIn]:
    return [suites.CaseIn([{"role": "user", "content": p}], check, ["t"]) for p in PROMPTS[:n]]


def test_an_eval_stops_outputs_and_keeps_the_verdicts_of_full_outputs(tiny_hub: Hub) -> None:
    suites.add_cases(tiny_hub, "form", _cases({"type": "max_words", "value": 1}), "tiny")
    early = run_eval(tiny_hub, "tiny", "form", max_new_tokens=TOKENS)
    outs = early["metrics"]["outputs"]
    assert outs["n"] == 8 and outs["stopped_at_verdict"] >= 3
    with tiny_hub.session() as s:
        stopped = list(s.scalars(select(EvalOutput).where(EvalOutput.stopped)))
        assert len(stopped) == outs["stopped_at_verdict"]
        assert all(o.completion_tokens < TOKENS for o in stopped)
    full = run_eval(tiny_hub, "tiny", "form", max_new_tokens=TOKENS, full_outputs=True)
    assert full["generated"] == outs["stopped_at_verdict"]  # only the stopped are redone
    assert full["metrics"]["outputs"]["stopped_at_verdict"] == 0
    assert full["metrics"]["outputs"]["tokens"] > outs["tokens"]
    assert _results(tiny_hub, early["run"]) == _results(tiny_hub, full["run"])


def test_a_stopped_output_serves_only_checks_it_decides(tiny_hub: Hub) -> None:
    suites.add_cases(tiny_hub, "form", _cases({"type": "max_words", "value": 1}), "tiny")
    first = run_eval(tiny_hub, "tiny", "form", max_new_tokens=TOKENS)
    stopped = first["metrics"]["outputs"]["stopped_at_verdict"]
    assert stopped >= 3
    # the same inputs with a check the prefixes decide too: nothing to generate
    suites.add_cases(tiny_hub, "form0", _cases({"type": "max_words", "value": 0}), "tiny")
    assert run_eval(tiny_hub, "tiny", "form0", max_new_tokens=TOKENS)["generated"] == 0
    # a check no prefix can decide: the stopped ones are generated to the end
    suites.add_cases(tiny_hub, "re", _cases({"type": "regex", "pattern": "zz+"}), "tiny")
    again = run_eval(tiny_hub, "tiny", "re", max_new_tokens=TOKENS)
    assert again["generated"] == stopped
    assert again["metrics"]["outputs"]["stopped_at_verdict"] == 0


def test_the_cli_says_how_many_answers_stopped(tiny_hub: Hub) -> None:
    suites.add_cases(tiny_hub, "form", _cases({"type": "max_words", "value": 1}), "tiny")
    home = tiny_hub.settings.home
    out = upstream(home, "eval", "tiny", "--suite", "form", "--max-new-tokens", str(TOKENS))
    assert out.returncode == 0, out.stderr
    assert "stopped once their verdict was certain" in out.stdout
    full = upstream(home, "eval", "tiny", "--suite", "form", "--full-outputs", "--json")
    assert full.returncode == 0, full.stderr
    assert json.loads(full.stdout)["metrics"]["outputs"]["stopped_at_verdict"] == 0
