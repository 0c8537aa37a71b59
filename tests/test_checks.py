import pytest

from upstream.checks import parse_check
from upstream.errors import InvalidInput


@pytest.mark.parametrize(
    "spec, output, passed",
    [
        ({"type": "exact", "value": "Paris"}, "Paris.", True),
        ({"type": "exact", "value": "Paris"}, "  paris ", True),
        ({"type": "exact", "value": "Paris"}, "The capital is Paris.", False),
        ({"type": "exact", "value": "Paris", "strict": True}, "Paris.", False),
        ({"type": "exact", "value": "Paris", "case_sensitive": True}, "paris", False),
        ({"type": "exact", "value": "café"}, "CAFÉ!", True),
        ({"type": "exact", "value": "Paris", "keep_punctuation": True}, "Paris.", False),
        ({"type": "exact", "value": "ﬁne"}, "fine", True),  # NFKC folds the ligature
        (
            {"type": "exact", "value": "ﬁne", "unicode_form": "NFC", "case_sensitive": True},
            "fine",
            False,
        ),
        ({"type": "one_of", "values": ["cold", "chilly"]}, "Cold.", True),
        ({"type": "one_of", "values": ["cold", "chilly"]}, "warm", False),
        ({"type": "contains", "values": ["paris"]}, "It is Paris, France", True),
        ({"type": "contains", "values": ["paris", "rome"], "mode": "all"}, "Paris", False),
        ({"type": "not_contains", "values": ["sorry"]}, "Sorry, I can't", False),
        ({"type": "not_contains", "values": ["sorry"]}, "Paris", True),
        ({"type": "regex", "pattern": r"^\d{4}$"}, "1989", True),
        ({"type": "regex", "pattern": r"^\d{4}$"}, "in 1989", False),
        ({"type": "json"}, '{"a": 1}', True),
        ({"type": "json"}, "```json\n[1, 2]\n```", True),
        ({"type": "json"}, "{a: 1}", False),
        ({"type": "json", "schema": {"type": "object", "required": ["a"]}}, '{"b": 1}', False),
        ({"type": "number", "value": 42}, "The answer is 42.", True),
        ({"type": "number", "value": 3.14, "tolerance": 0.01}, "about 3.141", True),
        ({"type": "number", "value": 1000}, "1,000 people", True),
        ({"type": "number", "value": 7}, "seven", False),
        ({"type": "number", "value": 0.5}, "about .5 litres", True),
        ({"type": "number", "value": 10}, "between 10-20 people", True),
        ({"type": "number", "value": -3}, "It is -3 degrees", True),
        ({"type": "regex", "pattern": "Paris", "strict": True}, "paris", False),
        ({"type": "json"}, 'Here you go:\n```JSON\n{"a": 1}\n```\nDone.', True),
        ({"type": "max_words", "value": 1}, "Paris.", True),
        ({"type": "max_words", "value": 1}, "It is Paris.", False),
        (
            {
                "type": "all_of",
                "checks": [{"type": "exact", "value": "paris"}, {"type": "max_words", "value": 1}],
            },
            "Paris",
            True,
        ),
        (
            {
                "type": "any_of",
                "checks": [{"type": "exact", "value": "rome"}, {"type": "exact", "value": "paris"}],
            },
            "Paris",
            True,
        ),
        (
            {"type": "not", "check": {"type": "contains", "values": ["as an ai"]}},
            "As an AI, I cannot",
            False,
        ),
    ],
)
def test_scoring(spec: dict, output: str, passed: bool) -> None:
    outcome = parse_check(spec).score(output)
    assert outcome.passed is passed, outcome.explanation
    assert 0.0 <= outcome.score <= 1.0
    # scoring is pure: the same output gets the same verdict again
    assert parse_check(spec).score(output) == outcome


def test_similar_uses_the_given_embedder() -> None:
    def embed(texts):  # unit vectors: same text -> same vector
        return [[1.0, 0.0] if "paris" in t else [0.0, 1.0] for t in texts]

    check = parse_check({"type": "similar", "value": "Paris", "threshold": 0.9})
    assert check.score("paris!", embed).passed
    assert not check.score("rome", embed).passed
    with pytest.raises(InvalidInput, match="embedding model"):
        check.score("paris")


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"type": "fuzzy", "value": "x"}, "expected.type 'fuzzy': unknown check type"),
        ({"type": "regex", "pattern": "(unclosed"}, "expected.pattern .*bad regex"),
        ({"type": "json", "schema": {"type": "no-such-type"}}, "expected.schema: not a valid"),
        ({"type": "exact"}, "expected.value: required"),
        ({"type": "exact", "value": 3}, "expected.value: 3 has the wrong type"),
        ({"type": "exact", "value": "a", "colour": 1}, "expected.colour: unknown field"),
        (
            {"type": "all_of", "checks": [{"type": "exact", "value": "a"}, {"type": "nope"}]},
            r"expected.checks\[1\].type 'nope'",
        ),
        ({"type": "contains", "values": []}, "expected.values: a non-empty list"),
        ({"type": "exact", "value": "a", "version": 99}, "check versions up to 1"),
        ("Paris", "must be a JSON object"),
        ({"type": "number", "value": 1, "tolerance": -1}, "tolerance: must be 0 or more"),
        ({"type": "number", "value": float("nan")}, "must be a finite number"),
        ({"type": "contains", "values": ["."]}, "empty once normalised"),
        ({"type": "exact", "value": "a", "unicode_form": "NFX"}, "unicode_form 'NFX'"),
    ],
)
def test_bad_specs_are_refused_naming_the_field(spec: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_check(spec)


def test_spec_records_its_version() -> None:
    assert parse_check({"type": "max_words", "value": 1}).spec["version"] == 1


def test_deep_nesting_is_refused_not_a_crash() -> None:
    spec: dict = {"type": "exact", "value": "x"}
    for _ in range(2000):
        spec = {"type": "not", "check": spec}
    with pytest.raises(InvalidInput, match="nest at most"):
        parse_check(spec)
