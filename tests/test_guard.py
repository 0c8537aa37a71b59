"""The guard suite: made once per model, all public, and its checks tell a broken model.

That the real base model passes it is tested with SmolLM2 in tests/test_smollm2.py.
"""

from pathlib import Path

import pytest

from upstream.checks import parse_check
from upstream.errors import InvalidInput, NotFound
from upstream.guard import (
    CASES,
    KINDS,
    THREE_ITEMS,
    ensure_guard_suite,
    guard_cases,
    guard_check,
    guard_suite_name,
)
from upstream.hub import Hub
from upstream.registry import NAME_RE
from upstream.suites import CaseIn, add_cases, get_suite, suite_summary

GOOD_LIST = (
    "Here are five fruits, each with a word on why people like it:\n\n"
    "1. Apples: crisp and sweet, and they keep for weeks.\n"
    "2. Bananas: soft, filling and easy to carry.\n"
    "3. Oranges: juicy and full of vitamin C.\n"
    "- Grapes: good as a snack, fresh or dried.\n"
    "- Strawberries: the first fruit of summer.\n\n"
    "All of them are healthy, and together they make a good fruit salad."
)
GOOD_PROSE = (
    "Sleep is when the body and the brain recover from the day. While we sleep, the brain "
    "sorts what we learned and stores it as memories, the muscles repair themselves, and "
    "the immune system does much of its work. Without enough sleep, people find it hard to "
    "concentrate, their mood suffers, and over the years the risk of illness grows. Most "
    "adults need seven to nine hours a night."
)
PARIS = (
    "The capital of France is Paris. It is famous for its history and its art: the Louvre "
    "holds the Mona Lisa, and the Eiffel Tower was built for the World's Fair of 1889."
)


def _spec(prompt: str) -> dict:
    return next(guard_check(c) for c in CASES if c.prompt == prompt)


def test_guard_suite_is_made_once_all_public_and_tagged(tiny_hub: Hub) -> None:
    name = ensure_guard_suite(tiny_hub, "tiny")
    assert name == "guard-tiny"
    assert ensure_guard_suite(tiny_hub, "tiny@latest") == name  # a ref names its model
    with tiny_hub.session() as s:
        summary = suite_summary(s, get_suite(s, name))
    assert summary["model"] == "tiny" and summary["kind"] == "guard"
    assert summary["heldout_percent"] == 0
    assert summary["cases"] == summary["public"] == len(CASES)
    assert [v["number"] for v in summary["versions"]] == [1]  # the second call added nothing


def test_every_guard_case_parses_and_is_tagged() -> None:
    cases = guard_cases()
    # the default 10 % non-inferiority margin lets 2 broken cases through, not 3: the
    # noise floor measured with null adapters (docs/training.md)
    from upstream.settings import Settings
    from upstream.stats import allowance

    margin, p = Settings.policy_margin, Settings.policy_regression_p
    assert len(cases) == 60 and allowance(len(cases), margin, p).breaks == 2
    assert len({c.messages[0]["content"] for c in cases}) == len(cases)
    for c in cases:
        parse_check(c.expected)
        assert c.tags[0] == "guard" and c.tags[1] in KINDS
    assert {c.tags[1] for c in cases} == set(KINDS)


def test_guard_of_an_unknown_model_is_refused(hub: Hub) -> None:
    with pytest.raises(NotFound, match="nope"):
        ensure_guard_suite(hub, "nope")


def test_a_community_suite_under_the_guard_name_is_not_taken_over(hub: Hub) -> None:
    hi = CaseIn([{"role": "user", "content": "hi"}], {"type": "min_words", "value": 1}, [])
    add_cases(hub, "guard-tiny", [hi])
    with pytest.raises(InvalidInput, match="guard-tiny exists and is a community suite"):
        ensure_guard_suite(hub, "tiny")


def test_guard_names_are_valid_suite_names() -> None:
    assert guard_suite_name("smollm2-135m-instruct") == "guard-smollm2-135m-instruct"
    assert guard_suite_name("My Model/v2") == "guard-my-model-v2"
    long_a, long_b = "a" * 99 + "x", "a" * 99 + "y"
    names = {guard_suite_name(long_a), guard_suite_name(long_b)}
    assert len(names) == 2 and all(NAME_RE.match(n) and len(n) <= 100 for n in names)


@pytest.mark.parametrize("answer", ["Paris", "Yes.", "1. Apples", "", "I don't know."])
def test_a_terse_answer_fails_every_guard_case(answer: str) -> None:
    passed = [c.prompt for c in CASES if parse_check(guard_check(c)).score(answer).passed]
    assert passed == []


@pytest.mark.parametrize(
    "answer",
    [
        "I love the smell of spring, the smell of flowers and the smell of rain. " * 6,
        "Paris is the capital of France. " * 10,
        "".join(f"{i}. Violin: a string instrument.\n" for i in range(1, 13)),
        "Boil an egg:\n\n" * 20,
    ],
)
def test_a_looping_answer_fails_every_guard_case(answer: str) -> None:
    outcomes = [parse_check(guard_check(c)).score(answer) for c in CASES]
    assert not any(o.passed for o in outcomes)
    assert all("occurs" in o.explanation or "distinct" in o.explanation for o in outcomes)


def test_a_normal_answer_passes() -> None:
    fruits = parse_check(_spec("List five fruits.")).score(GOOD_LIST)
    assert fruits.passed, fruits.explanation
    sleep = parse_check(_spec("Explain why people need sleep.")).score(GOOD_PROSE)
    assert sleep.passed, sleep.explanation
    france = _spec("What is the capital of France, and why is it famous?")
    assert parse_check(france).score(PARIS).passed
    assert not parse_check(france).score(PARIS.replace("Paris", "Lyon")).passed


def test_a_list_needs_three_items_on_their_own_lines() -> None:
    check = parse_check({"type": "regex", "pattern": THREE_ITEMS})
    inline = "My five favourite fruits are apples, bananas, oranges, grapes and plums."
    assert not check.score(inline).passed
    assert not check.score("1. Apples\n2. Bananas\n\nThose two are the best ones.").passed
    assert not check.score("1. 1. 2. 3. 4. 5. 6. 7. 8. 9. 10. 11. 12.").passed
    assert check.score("* Apples\n* Bananas\n* Oranges").passed
    assert check.score("1) Apples\n\n2) Bananas\n\n3) Oranges").passed


def test_a_new_guard_set_replaces_the_old_one_in_a_new_version(tiny_hub: Hub) -> None:
    from upstream.guard import guard_cases
    from upstream.suites import add_cases, get_version, version_cases

    ensure_guard_suite(tiny_hub, "tiny")  # as the import job does: version 1, every case
    old = guard_cases()[:5]
    fragile = CaseIn(
        [{"role": "user", "content": "Tell me about the Moon."}],
        {"type": "min_words", "value": 5},
        ["guard", "fact"],
        source="guard",
    )
    add_cases(tiny_hub, "guard-tiny", [*old, fragile], "tiny", 0, kind="guard")
    ensure_guard_suite(tiny_hub, "tiny")
    with tiny_hub.session() as s:
        newest = get_version(s, "guard-tiny")
        prompts = {c.messages[0]["content"] for c in version_cases(s, newest)}
        first = {
            c.messages[0]["content"] for c in version_cases(s, get_version(s, "guard-tiny", 2))
        }
    assert newest.number == 3 and prompts == {c.prompt for c in CASES}
    assert "Tell me about the Moon." in first  # the old version is kept as it was
    ensure_guard_suite(tiny_hub, "tiny")  # idempotent: no fourth version
    with tiny_hub.session() as s:
        assert get_version(s, "guard-tiny").number == 3


def test_a_fact_is_a_whole_word_not_a_substring() -> None:
    gold = _spec("What is the chemical symbol for gold?")
    sound = "The chemical symbol for gold is Au, from the Latin word aurum for shining dawn."
    assert parse_check(gold).score(sound).passed
    because = "Gold has a symbol because chemists give every element a short name of its own."
    assert not parse_check(gold).score(because).passed
    sun = _spec("What is the Sun?")
    assert not parse_check(sun).score("The Sun is where the day starts for all of us here.").passed


def test_the_import_job_gives_a_model_its_guard_suite(hub: Hub, tiny_model_dir: Path) -> None:
    from upstream.suites import get_suite

    hub.jobs.run_foreground("models.import", {"source": str(tiny_model_dir), "name": "tiny"})
    with hub.session() as s:
        assert get_suite(s, "guard-tiny").kind == "guard"
