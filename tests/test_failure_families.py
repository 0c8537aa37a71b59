"""The three families of ignored instructions used by benchmarks/loop.py: each holds
reports, training examples and unseen prompts, valid and kept apart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from upstream import reports
from upstream.checks import lenient
from upstream.guard import CASES
from upstream.suites import read_cases
from upstream.training import parse_dataset, replay_prompts

FAMILIES = Path(__file__).parent.parent / "benchmarks" / "families"
NAMES = sorted(p.name for p in FAMILIES.iterdir() if p.is_dir())


def question(prompt: str) -> str:
    """The question without its format instruction ("…? Answer with one word.")."""
    return prompt.split("?")[0].strip().casefold()


def prompts(family: str) -> dict[str, list[str]]:
    d = FAMILIES / family
    good, bad = reports.parse_jsonl((d / "reports.jsonl").read_bytes(), "m")
    assert not bad, bad
    train = parse_dataset((d / "train.jsonl").read_bytes())
    unseen = read_cases(d / "unseen.jsonl", 32_000)
    return {
        "reports": [r.prompt or "" for _, r in good],
        "train": [c.messages[0]["content"] for c in train],
        "unseen": [c.messages[0]["content"] for c in unseen],
    }


def test_there_are_three_families_of_different_instructions() -> None:
    assert NAMES == ["number", "one_word", "yes_no"]


@pytest.mark.parametrize("family", NAMES)
def test_each_family_is_valid_and_its_parts_are_kept_apart(family: str) -> None:
    parts = prompts(family)
    assert len(parts["reports"]) >= 8 and len(parts["train"]) >= 20
    assert len(parts["unseen"]) >= 30
    questions = {k: {question(p) for p in v} for k, v in parts.items()}
    assert not questions["reports"] & questions["train"]
    assert not questions["reports"] & questions["unseen"]
    assert not questions["train"] & questions["unseen"]
    # the recipe's replay pool and the guard never see an unseen question either
    others = {question(p) for p in replay_prompts()} | {question(c.prompt) for c in CASES}
    assert not questions["unseen"] & others


@pytest.mark.parametrize("family", NAMES)
def test_every_unseen_case_has_an_answer_to_keep(family: str) -> None:
    for line in (FAMILIES / family / "unseen.jsonl").read_text().splitlines():
        assert lenient(json.loads(line)["expected"]) is not None  # knowledge is measurable
