import pytest

from upstream.checks import lenient, parse_check
from upstream.errors import InvalidInput

PROSE = (
    "Photosynthesis is the process by which plants, algae and some bacteria turn light "
    "into chemical energy. In the leaves, chlorophyll absorbs sunlight, and the plant uses "
    "that energy to join carbon dioxide from the air and water from the soil into glucose. "
    "Oxygen is released as a by-product, which is why forests matter for the air we "
    "breathe. The glucose feeds the plant and, through food chains, most life on Earth."
)
LIST = (
    "Here are three tips for staying healthy:\n\n"
    "1. Stay hydrated: drink water through the day, more when it is hot.\n"
    "2. Eat a balanced diet: plenty of fruit, vegetables and whole grains.\n"
    "3. Get enough sleep: aim for 7-8 hours of sleep each night.\n"
)
# a 21-word sentence said 3 times: no phrase more than 3 times, 34 % distinct
LONG_LOOP = (
    "Echo was tasked with creating a sculpture that could be used as a tool for artistic "
    "expression in the old town. "
) * 3


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
        ({"type": "min_words", "value": 3}, "It is Paris.", True),
        ({"type": "min_words", "value": 3}, "Paris, France.", False),
        ({"type": "min_words", "value": 2}, "don't-care", False),  # counted as max_words does
        ({"type": "min_words", "value": 1}, "", False),
        ({"type": "not_repetitive"}, PROSE, True),
        ({"type": "not_repetitive"}, LIST, True),
        ({"type": "not_repetitive"}, "Paris.", True),  # too short to repeat anything
        ({"type": "not_repetitive"}, "I don't know. " * 6, False),  # a phrase 6 times
        ({"type": "not_repetitive"}, PROSE + " I love the smell of spring." * 5, False),
        # numbering does not hide a loop: every number is the same word
        ({"type": "not_repetitive"}, "".join(f"{i}. Violin\n" for i in range(1, 20)), False),
        ({"type": "not_repetitive"}, "1 2 3 4 5 6 7 8 9 10 11 12", False),
        # a long loop repeats each phrase rarely, but few of its phrases are distinct
        ({"type": "not_repetitive"}, LONG_LOOP, False),
        ({"type": "not_repetitive", "min_distinct": 0}, LONG_LOOP, True),
        (
            {"type": "not_repetitive", "max_repeats": 6, "min_distinct": 0},
            "I don't know. " * 6,
            True,
        ),
        ({"type": "not_repetitive", "n": 1, "max_repeats": 2}, "the cat and the dog", True),
        ({"type": "not_repetitive", "n": 1, "max_repeats": 1}, "the cat and the dog", False),
        ({"type": "not_repetitive", "case_sensitive": True}, "No way. NO WAY. no way. " * 2, True),
        ({"type": "not_repetitive"}, "No way. NO WAY. no way. " * 2, False),
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
        ({"type": "min_words"}, "expected.value: required for a min_words check"),
        ({"type": "min_words", "value": 0}, "expected.value 0: a min_words check needs 1 or more"),
        ({"type": "min_words", "value": "3"}, "expected.value: '3' has the wrong type"),
        ({"type": "not_repetitive", "n": 0}, "expected.n 0: allowed 1 to 10"),
        ({"type": "not_repetitive", "n": 11}, "expected.n 11: allowed 1 to 10"),
        ({"type": "not_repetitive", "max_repeats": 0}, "expected.max_repeats 0: must be 1 or"),
        ({"type": "not_repetitive", "min_distinct": 1.5}, "expected.min_distinct 1.5: allowed 0"),
        ({"type": "not_repetitive", "min_distinct": float("nan")}, "min_distinct nan: allowed"),
        ({"type": "not_repetitive", "n": True}, "expected.n: True has the wrong type"),
        ({"type": "not_repetitive", "window": 3}, "expected.window: unknown field.*max_repeats"),
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


def test_repetition_is_explained() -> None:
    looping = parse_check({"type": "not_repetitive"}).score("I don't know. " * 6)
    assert '"i don\'t know" occurs 6 times, more than 4 allowed' in looping.explanation
    assert looping.score == 0.0
    long_loop = parse_check({"type": "not_repetitive"}).score(LONG_LOOP)
    assert "only 34% of 61 3-word phrases are distinct, 50% needed" in long_loop.explanation
    assert parse_check({"type": "min_words", "value": 5}).score("Paris.").explanation == (
        "1 word(s), at least 5 needed"
    )


# ---------------------------------------------------------------- lenient parts

EIGHT = {"type": "exact", "value": "8"}


@pytest.mark.parametrize(
    "spec, output, stated",
    [
        # the base that knows the answer in the wrong form
        (EIGHT, "A spider has eight legs (8) because it is an arachnid.", True),
        (EIGHT, "8", True),
        (EIGHT, "6", False),
        (EIGHT, "It has 18 legs.", False),  # a whole word: not inside 18
        (EIGHT, "About 3.8 legs.", False),  # nor inside a decimal
        (EIGHT, "8.5 legs", False),
        ({"type": "exact", "value": "no"}, "I know the answer", False),
        ({"type": "exact", "value": "no"}, "No, it is not.", True),
        ({"type": "exact", "value": "New York"}, "It is in new  york, mostly.", True),
        ({"type": "exact", "value": "York"}, "Yorkshire", False),
        ({"type": "one_of", "values": ["yes", "true"]}, "That is true.", True),
        ({"type": "one_of", "values": ["yes", "true"]}, "untrue", False),
        ({"type": "number", "value": 8}, "A spider has eight legs.", True),
        ({"type": "number", "value": 8}, "It has 6 legs, or 8 in all.", True),  # any number
        ({"type": "number", "value": 8}, "It has eighteen legs.", False),
        ({"type": "number", "value": 20}, "Twenty.", True),
        ({"type": "number", "value": 3.1, "tolerance": 0.05}, "pi is about 3.14", True),
        ({"type": "number", "value": 8}, "no number here", False),
        ({"type": "contains", "values": ["Paris"]}, "the capital is Paris", True),
        ({"type": "contains", "values": ["a", "zz"], "mode": "all"}, "a b", False),
        (
            {"type": "all_of", "checks": [EIGHT, {"type": "max_words", "value": 1}]},
            "It has 8 legs.",
            True,  # only the answer-bearing child counts
        ),
        (
            {"type": "all_of", "checks": [EIGHT, {"type": "contains", "values": ["legs"]}]},
            "It has 8 arms.",
            False,
        ),
        (
            {"type": "any_of", "checks": [EIGHT, {"type": "exact", "value": "eight"}]},
            "eight of them",
            True,
        ),
    ],
)
def test_lenient_finds_the_stated_answer(spec: dict, output: str, stated: bool) -> None:
    part = lenient(spec)
    assert part is not None
    assert part.score(output).passed is stated, part.score(output).explanation


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "not", "check": EIGHT},
        {"type": "not_contains", "values": ["x"]},
        {"type": "max_words", "value": 3},
        {"type": "min_words", "value": 3},
        {"type": "regex", "pattern": "8"},
        {"type": "json"},
        {"type": "similar", "value": "eight"},
        {"type": "not_repetitive"},
        {"type": "all_of", "checks": [{"type": "max_words", "value": 3}, {"type": "json"}]},
        {"type": "any_of", "checks": [{"type": "not", "check": EIGHT}]},
    ],
)
def test_checks_of_form_state_no_answer(spec: dict) -> None:
    assert lenient(spec) is None


def test_lenient_is_the_strict_check_for_contains_and_refuses_bad_specs() -> None:
    spec = {"type": "contains", "values": ["Paris"]}
    assert lenient(spec) == parse_check(spec)
    with pytest.raises(InvalidInput, match="unknown check type"):
        lenient({"type": "fuzzy"})


def test_a_regex_cannot_hang_a_worker_and_backreferences_are_refused() -> None:
    import time

    from upstream.checks import parse_check

    check = parse_check({"type": "regex", "pattern": "(a+)+$"}, "expected")
    started = time.perf_counter()
    outcome = check.score("a" * 50_000 + "b")  # backtracking engines take ages here
    assert outcome.passed is False
    assert time.perf_counter() - started < 0.5
    for pattern in (r"(a)\1", r"(?=x)y", "x" * 1001):
        with pytest.raises(InvalidInput, match="expected.pattern"):
            parse_check({"type": "regex", "pattern": pattern}, "expected")
    case = parse_check({"type": "regex", "pattern": "paris"}, "expected")
    assert case.score("PARIS!").passed is True
    strict = parse_check({"type": "regex", "pattern": "paris", "case_sensitive": True}, "e")
    assert strict.score("PARIS!").passed is False


def test_a_json_schema_never_makes_the_hub_fetch_anything() -> None:
    from upstream.checks import parse_check

    for ref in ("https://example.com/s.json", "file:///etc/passwd", "other.json#/x"):
        with pytest.raises(InvalidInput, match=r"only references inside the schema"):
            parse_check({"type": "json", "schema": {"$ref": ref}}, "expected")
        nested = {"type": "object", "properties": {"a": {"$ref": ref}}}
        with pytest.raises(InvalidInput, match=r"expected.schema.properties.a.\$ref"):
            parse_check({"type": "json", "schema": nested}, "expected")
    local = {
        "$defs": {"n": {"type": "integer"}},
        "type": "object",
        "properties": {"n": {"$ref": "#/$defs/n"}},
    }
    check = parse_check({"type": "json", "schema": local}, "expected")
    assert check.score('{"n": 3}').passed is True
    assert check.score('{"n": "x"}').passed is False
    # a schema that names itself by URL still resolves only within itself
    named = {**local, "$id": "https://example.com/root.json"}
    assert parse_check({"type": "json", "schema": named}, "e").score('{"n": 1}').passed is True
