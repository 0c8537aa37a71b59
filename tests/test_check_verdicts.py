"""Early verdicts: a check that calls its verdict decided on a prefix of an output must
give that verdict to every output that begins with it (checks.decided)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from upstream.checks import decided, lenient, parse_check, stable_prefix

# Pieces chosen to meet the normaliser's edges: case, punctuation at both ends and "_"
# (punctuation that is also a word character), digits with separators, a combining accent,
# compatibility forms (NFKC "ﬁ", no-break space), ß (casefolds to "ss") and line breaks.
PIECES = [
    "8",
    "18",
    "3.5",
    "1,000",
    "-2",
    "eight",
    "Paris",
    "paris",
    "PARIS",
    "yes",
    "No",
    "no",
    "a",
    "the",
    "legs",
    "spider",
    "has",
    "don't",
    "well-known",
    "ﬁne",
    "Straße",
    "strasse",
    "é",
    "e\u0301",
    ".",
    ",",
    "!",
    "?",
    "*",
    "_",
    "-",
    "'",
    '"',
    "(",
    ")",
    "…",
    "«",
]
SPACES = [" ", "  ", "\n", "\t", "\u00a0", " \n"]


@st.composite
def texts(draw: Any, max_pieces: int = 12) -> str:
    n = draw(st.integers(0, max_pieces))
    out = []
    for _ in range(n):
        out.append(draw(st.sampled_from(PIECES)))
        if draw(st.booleans()):
            out.append(draw(st.sampled_from(SPACES)))
    return "".join(out)


WORDS = st.sampled_from(["8", "eight", "Paris", "yes", "no", "the legs", "a", "ﬁne", "Straße"])
NORM = st.fixed_dictionaries(
    {},
    optional={
        "strict": st.booleans(),
        "case_sensitive": st.booleans(),
        "keep_punctuation": st.booleans(),
        "unicode_form": st.sampled_from(["NFKC", "NFC", "NFD", "NFKD", "none"]),
    },
)


def _with_norm(draw: Any, spec: dict[str, Any]) -> dict[str, Any]:
    return {**draw(NORM), **spec}


@st.composite
def leaf_checks(draw: Any) -> dict[str, Any]:
    kind = draw(
        st.sampled_from(
            [
                "exact",
                "one_of",
                "contains",
                "not_contains",
                "number",
                "max_words",
                "min_words",
                "not_repetitive",
                "regex",
                "json",
            ]
        )
    )
    if kind == "exact":
        return _with_norm(draw, {"type": kind, "value": draw(WORDS)})
    if kind in ("one_of", "contains", "not_contains"):
        spec = {"type": kind, "values": draw(st.lists(WORDS, min_size=1, max_size=3))}
        if kind == "contains":
            spec["mode"] = draw(st.sampled_from(["any", "all"]))
        return _with_norm(draw, spec)
    if kind == "number":
        return {
            "type": kind,
            "value": draw(st.sampled_from([8, 18, 3.5, 1000, -2])),
            "tolerance": draw(st.sampled_from([0, 0.5])),
            "first": draw(st.booleans()),
        }
    if kind == "max_words":
        return {"type": kind, "value": draw(st.integers(0, 4))}
    if kind == "min_words":
        return {"type": kind, "value": draw(st.integers(1, 4))}
    if kind == "not_repetitive":
        return _with_norm(
            draw,
            {"type": kind, "n": draw(st.integers(1, 2)), "max_repeats": draw(st.integers(1, 2))},
        )
    if kind == "regex":
        return {"type": kind, "pattern": "^8$"}
    return {"type": "json"}


checks = st.recursive(
    leaf_checks(),
    lambda children: st.one_of(
        st.builds(
            lambda cs: {"type": "all_of", "checks": cs}, st.lists(children, min_size=1, max_size=3)
        ),
        st.builds(
            lambda cs: {"type": "any_of", "checks": cs}, st.lists(children, min_size=1, max_size=3)
        ),
        st.builds(lambda c: {"type": "not", "check": c}, children),
    ),
    max_leaves=4,
)

PROPERTY = settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _agrees(spec: dict[str, Any], prefix: str, rest: str, lenient_part: bool) -> bool | None:
    check = parse_check(spec)
    if lenient_part:
        part = lenient(spec)
        if part is None:
            return None
        check = part
    verdict = decided(check, prefix)
    if verdict is not None:
        for output in (prefix + rest, stable_prefix(prefix) + rest):
            assert check.score(output).passed is verdict, (spec, prefix, rest, output, verdict)
    return verdict


@PROPERTY
@given(checks, texts(), texts(6))
@example({"type": "exact", "value": "8"}, "A spider has", " eight legs.")
@example({"type": "not_repetitive", "n": 1, "max_repeats": 1}, "foo_ foo_ ", "x")
def test_a_decided_verdict_holds_for_every_completion(spec: Any, prefix: str, rest: str) -> None:
    _agrees(spec, prefix, rest, lenient_part=False)


@PROPERTY
@given(checks, texts(), texts(6))
@example({"type": "exact", "value": "8"}, "8_ ", "x")  # "_" is punctuation and a word character
def test_a_decided_lenient_verdict_holds_for_every_completion(
    spec: Any, prefix: str, rest: str
) -> None:
    _agrees(spec, prefix, rest, lenient_part=True)


@pytest.mark.parametrize(
    ("spec", "prefix", "verdict"),
    [
        ({"type": "exact", "value": "8"}, "A spider has", False),
        ({"type": "exact", "value": "8"}, "8", None),  # "8" may still become "80"
        ({"type": "exact", "value": "8"}, "8.\n", None),  # the output may end here
        ({"type": "exact", "value": "Paris is"}, "Paris ", None),
        ({"type": "one_of", "values": ["yes", "no"]}, "Yes, because ", False),
        ({"type": "max_words", "value": 1}, "Paris is", None),  # "is" may grow
        ({"type": "max_words", "value": 1}, "Paris is ", False),
        ({"type": "min_words", "value": 2}, "Paris is ", True),
        ({"type": "contains", "values": ["Paris"]}, "It is Paris, of course", True),
        ({"type": "contains", "values": ["Paris", "Rome"], "mode": "all"}, "Paris and ", None),
        ({"type": "not_contains", "values": ["sorry"]}, "Sorry, I can't", False),
        ({"type": "number", "value": 8}, "A spider has 8 legs", True),
        ({"type": "number", "value": 8}, "There are 6 or 8 ", False),
        ({"type": "number", "value": 8, "first": False}, "There are 6 or 8 ", None),
        ({"type": "regex", "pattern": "^8"}, "8 legs ", None),
        ({"type": "json"}, '{"a": 1} ', None),
        ({"type": "not", "check": {"type": "exact", "value": "8"}}, "A spider has", True),
        (
            {
                "type": "all_of",
                "checks": [{"type": "number", "value": 8}, {"type": "max_words", "value": 1}],
            },
            "8 legs ",
            False,
        ),
        (
            {
                "type": "any_of",
                "checks": [
                    {"type": "exact", "value": "8"},
                    {"type": "contains", "values": ["eight"]},
                ],
            },
            "It has eight ",
            True,
        ),
    ],
)
def test_verdicts_known_early(spec: dict[str, Any], prefix: str, verdict: bool | None) -> None:
    assert decided(parse_check(spec), prefix) is verdict


def test_lenient_parts_are_decided_once_the_answer_is_stated() -> None:
    part = lenient({"type": "exact", "value": "8"})
    assert part is not None
    assert decided(part, "A spider has 8 legs") is True
    assert decided(part, "A spider has") is None  # failing is never certain: it may come
    number = lenient({"type": "number", "value": 8})
    assert number is not None
    assert decided(number, "It has eight legs") is True


def test_stable_prefix_ends_at_the_last_whitespace() -> None:
    assert stable_prefix("A spider has") == "A spider "
    assert stable_prefix("A spider has\n") == "A spider has\n"
    assert stable_prefix("spider") == ""
