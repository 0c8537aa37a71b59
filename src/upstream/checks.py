"""Checks: machine-checkable expectations about a model's output.

A check is a typed spec (JSON) with a version, parsed once into an object whose
`score(output)` is pure: the same output always gets the same verdict, so outputs can
be re-scored after a check changes without generating again.

    {"type": "exact", "value": "Paris"}
    {"type": "max_words", "value": 1}
    {"type": "all_of", "checks": [...]}

Text checks compare normalised text by default: Unicode NFKC, case folded, whitespace
collapsed, surrounding whitespace and punctuation stripped ("Paris." matches "paris").
Each step is an option of the spec: `"case_sensitive": true` keeps case,
`"keep_punctuation": true` keeps surrounding punctuation, `"unicode_form"` is one of
NFKC (default), NFC, NFD, NFKD or none; `"strict": true` turns all normalisation off.

Checks of form rather than content catch a model that has lost its general behaviour:
`max_words` and `min_words` count words (runs of letters and digits, with inner
apostrophes and hyphens: "don't" and "well-known" are one word each), and
`not_repetitive` fails an output that loops (see `NotRepetitive`).

`lenient(spec)` is the answer-bearing part of a check, scored leniently: does the output
state the expected answer anywhere? The CI uses it to see knowledge the base had and a
candidate lost (a base that answers "A spider has eight legs (8)..." fails `exact "8"`
but knows the answer; a candidate that answers "6" has lost it).

A check can often tell its verdict before the output ends: after "A spider has" the check
`exact "8"` has failed whatever comes next, after two words `max_words 1` has, and once
"Paris" has appeared `contains "Paris"` has passed. `decided(check, text)` is that
verdict for a text that is still being generated, or None while it is not yet certain;
the evaluation loop stops a row as soon as it is decided (docs/evaluation.md). Only the
text up to the last whitespace counts (`stable_prefix`): the word being written may still
grow, and a decided verdict holds for every text that begins with that stable part, so a
trailing "." or more words cannot flip it. Kinds that cannot know early (regex, json,
similar) are never decided before the end.
"""

from __future__ import annotations

import functools
import json
import math
import re
import string
import unicodedata
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import re2
import referencing
import referencing.exceptions

from upstream.errors import InvalidInput

CHECK_VERSION = 1
PUNCTUATION = string.punctuation + "“”‘’«»…–—¿¡"
# Embeds texts into unit vectors, one row per text (e.g. `upstream.embeddings.embed`, which
# returns a numpy array); given to `similar` checks by the caller.
Embedder = Callable[[Sequence[str]], Any]


@dataclass(frozen=True)
class Outcome:
    passed: bool
    score: float  # 0..1
    explanation: str


UNICODE_FORMS = ("NFKC", "NFC", "NFD", "NFKD", "none")


@dataclass(frozen=True)
class Normalizer:
    strict: bool = False
    case_sensitive: bool = False
    keep_punctuation: bool = False
    unicode_form: str = "NFKC"

    def __call__(self, text: str) -> str:
        if self.strict:
            return text
        if self.unicode_form != "none":
            text = unicodedata.normalize(self.unicode_form, text)  # type: ignore[arg-type]
        text = " ".join(text.split())
        if not self.keep_punctuation:
            text = text.strip(PUNCTUATION + " ")
        return text if self.case_sensitive else text.casefold()

    def opening(self, prefix: str) -> str | None:
        """What the normalised form of every text that begins with `prefix` begins with,
        beyond `self(prefix)` itself (which a text that adds only whitespace and
        punctuation normalises to); None while the start is not settled.

        `prefix` is a stable prefix (it ends in whitespace, see `stable_prefix`): a text
        `prefix + more` normalises to `self(prefix)` or to `opening + something`.
        """
        if self.strict:
            return prefix
        if self.unicode_form != "none":
            prefix = unicodedata.normalize(self.unicode_form, prefix)  # type: ignore[arg-type]
        text = " ".join(prefix.split())
        if not self.keep_punctuation:
            text = text.lstrip(PUNCTUATION + " ")
        if not text:
            return None  # nothing but whitespace and punctuation yet: the start may change
        text += " "
        return text if self.case_sensitive else text.casefold()


def stable_prefix(text: str) -> str:
    """The part of a text being generated that later tokens cannot change: everything up
    to and including its last whitespace ("" when there is none)."""
    for i in range(len(text) - 1, -1, -1):
        if text[i].isspace():
            return text[: i + 1]
    return ""


def decided(check: Check, text: str) -> bool | None:
    """The verdict `check` gives every output that begins with the stable prefix of `text`
    (a text still being generated), or None when more text could change it."""
    prefix = stable_prefix(text)
    return check.decide(prefix) if prefix else None


@dataclass(frozen=True)
class Check(ABC):
    """Base of every check: its spec (as given, with the version) and normaliser."""

    spec: dict[str, Any]
    norm: Normalizer = field(default_factory=Normalizer)

    @abstractmethod
    def score(self, output: str, embed: Embedder | None = None) -> Outcome:
        """Judge one output: passed, a score in 0..1, and why."""

    def decide(self, prefix: str) -> bool | None:
        """The verdict of every output that begins with `prefix` (a stable prefix: it
        ends in whitespace), or None when it is not certain yet. By default never."""
        return None


def _verdict(passed: bool, why: str) -> Outcome:
    return Outcome(passed, 1.0 if passed else 0.0, why)


def _cannot_become(norm: Normalizer, prefix: str, values: Sequence[str]) -> bool | None:
    """False when no output beginning with `prefix` can normalise to one of `values`."""
    opening = norm.opening(prefix)
    if opening is None:
        return None
    closed = norm(prefix)
    for value in values:
        want = norm(value)
        if want == closed or want.startswith(opening):
            return None
    return False


class Exact(Check):
    def score(self, output: str, embed: Embedder | None = None) -> Outcome:
        want = self.spec["value"]
        ok = self.norm(output) == self.norm(want)
        return _verdict(ok, f"output {'equals' if ok else 'does not equal'} {want!r}")

    def decide(self, prefix: str) -> bool | None:
        return _cannot_become(self.norm, prefix, [self.spec["value"]])


class OneOf(Check):
    def score(self, output: str, embed: Embedder | None = None) -> Outcome:
        got = self.norm(output)
        hit = next((v for v in self.spec["values"] if self.norm(v) == got), None)
        return _verdict(
            hit is not None,
            f"matches {hit!r}" if hit is not None else f"is none of {self.spec['values']!r}",
        )

    def decide(self, prefix: str) -> bool | None:
        return _cannot_become(self.norm, prefix, self.spec["values"])


class Contains(Check):
    def score(self, output: str, embed: Embedder | None = None) -> Outcome:
        got = self.norm(output)
        values = self.spec["values"]
        found = [v for v in values if self.norm(v) in got]
        need_all = self.spec.get("mode", "any") == "all"
        ok = len(found) == len(values) if need_all else bool(found)
        missing = [v for v in values if v not in found]
        return Outcome(
            ok,
            len(found) / len(values),
            f"contains {found!r}" + (f", lacks {missing!r}" if missing else ""),
        )

    def decide(self, prefix: str) -> bool | None:
        # text found in the prefix stays in every longer output; what is missing may come
        got = self.norm(prefix)
        found = [self.norm(v) in got for v in self.spec["values"]]
        need_all = self.spec.get("mode", "any") == "all"
        return True if (all(found) if need_all else any(found)) else None


class NotContains(Check):
    def score(self, output: str, embed: Embedder | None = None) -> Outcome:
        got = self.norm(output)
        found = [v for v in self.spec["values"] if self.norm(v) in got]
        return _verdict(
            not found,
            f"contains forbidden {found!r}" if found else "contains none of the forbidden strings",
        )

    def decide(self, prefix: str) -> bool | None:
        got = self.norm(prefix)
        return False if any(self.norm(v) in got for v in self.spec["values"]) else None


MAX_PATTERN_CHARS = 1000


@functools.lru_cache(maxsize=1024)
def compile_pattern(pattern: str, case_sensitive: bool) -> Any:
    """A regex check's pattern compiled by RE2, which matches in time linear in the text
    (no backtracking: a pattern such as `(a+)+$` cannot hang a worker). RE2 has no
    backreferences or lookaround; such a pattern is refused when the check is made."""
    options = re2.Options()
    options.case_sensitive = case_sensitive
    options.log_errors = False
    options.max_mem = 8 << 20  # bytes of compiled program: a huge pattern is refused
    try:
        return re2.compile(pattern, options)
    except re2.error as e:
        detail = e.args[0].decode() if e.args and isinstance(e.args[0], bytes) else str(e)
        raise InvalidInput(
            f"pattern {pattern!r}: bad regex: {detail} (patterns are RE2: no backreferences "
            "or lookaround)"
        ) from e


class Regex(Check):
    def score(self, output: str, embed: Embedder | None = None) -> Outcome:
        exact_case = self.spec.get("case_sensitive", False) or self.spec.get("strict", False)
        m = compile_pattern(self.spec["pattern"], bool(exact_case)).search(output)
        return _verdict(
            m is not None, f"pattern {'found' if m else 'not found'}: {self.spec['pattern']!r}"
        )


class Json(Check):
    def score(self, output: str, embed: Embedder | None = None) -> Outcome:
        text = output.strip()
        fenced = re.search(r"```(?:json)?\s*(.*?)\s*```", text, re.S | re.IGNORECASE)
        try:
            value = json.loads(fenced.group(1) if fenced else text)
        except json.JSONDecodeError as e:
            return _verdict(False, f"not JSON: {e.msg} at character {e.pos}")
        schema = self.spec.get("schema")
        if schema is not None:
            import jsonschema

            validator = jsonschema.Draft202012Validator(schema, registry=_LOCAL_ONLY)
            errors = list(validator.iter_errors(value))
            if errors:
                return _verdict(False, f"JSON does not fit the schema: {errors[0].message}")
        return _verdict(True, "valid JSON" + (" fitting the schema" if schema else ""))


def _refuse_retrieval(uri: str) -> Any:
    """A json check's schema is all there is: nothing is ever fetched or read for it."""
    raise referencing.exceptions.NoSuchResource(uri)


_LOCAL_ONLY = referencing.Registry(retrieve=_refuse_retrieval)  # type: ignore[call-arg]


def _check_local_refs(schema: Any, where: str) -> None:
    """Every `$ref` (and `$dynamicRef`) of a schema points inside it (`#…`)."""
    stack = [(schema, where)]
    while stack:
        node, at = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("$ref", "$dynamicRef") and not (
                    isinstance(value, str) and value.startswith("#")
                ):
                    raise InvalidInput(
                        f"{at}.{key} {value!r}: only references inside the schema (#/…) are "
                        "allowed; the hub fetches nothing for a check"
                    )
                stack.append((value, f"{at}.{key}"))
        elif isinstance(node, list):
            stack.extend((v, f"{at}.{i}") for i, v in enumerate(node))


# A number not glued to a word or another number: "-3", "1,000", "3.14", ".5", "2e3"; in
# "10-20" the dash is a range, not a minus sign.
NUMBER_RE = re.compile(
    r"(?<![\w.-])-?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?"
)


def _numbers(text: str) -> list[float]:
    """The numbers written in digits in `text`, in order ("1,000" is 1000)."""
    return [float(n.replace(",", "")) for n in NUMBER_RE.findall(text)]


def _close(got: float, want: float, tolerance: float) -> bool:
    return math.isclose(got, want, abs_tol=tolerance) or got == want


class Number(Check):
    def score(self, output: str, embed: Embedder | None = None) -> Outcome:
        want = float(self.spec["value"])
        tol = float(self.spec.get("tolerance", 0.0))
        numbers = _numbers(output)
        if not numbers:
            return _verdict(False, "no number in the output")
        got = numbers[0] if self.spec.get("first", True) else numbers[-1]
        ok = _close(got, want, tol)
        return _verdict(ok, f"number {got:g} {'within' if ok else 'outside'} {tol:g} of {want:g}")

    def decide(self, prefix: str) -> bool | None:
        # a number followed by whitespace is complete, and the first one stays the first
        if not self.spec.get("first", True):
            return None
        numbers = _numbers(prefix)
        if not numbers:
            return None
        want, tol = float(self.spec["value"]), float(self.spec.get("tolerance", 0.0))
        return _close(numbers[0], want, tol)


# A word: letters and digits, with inner apostrophes and hyphens ("don't", "well-known").
WORD_RE = re.compile(r"\w+(?:['’-]\w+)*")


class MaxWords(Check):
    def score(self, output: str, embed: Embedder | None = None) -> Outcome:
        words = len(WORD_RE.findall(output))
        limit = int(self.spec["value"])
        return _verdict(words <= limit, f"{words} word(s), limit {limit}")

    def decide(self, prefix: str) -> bool | None:
        # words before the last whitespace are complete; more text only adds words
        return False if len(WORD_RE.findall(prefix)) > int(self.spec["value"]) else None


class MinWords(Check):
    def score(self, output: str, embed: Embedder | None = None) -> Outcome:
        words = len(WORD_RE.findall(output))
        need = int(self.spec["value"])
        return _verdict(words >= need, f"{words} word(s), at least {need} needed")

    def decide(self, prefix: str) -> bool | None:
        return True if len(WORD_RE.findall(prefix)) >= int(self.spec["value"]) else None


# Defaults of `not_repetitive`, measured on SmolLM2-135M-Instruct's greedy answers to about
# 60 ordinary instructions (lists, how-tos, stories; 96-128 new tokens, 50-110 words): where
# the answer is sound, no 3-word phrase occurs more than 4 times and at least 73 % of the
# phrases are distinct; where it loops (a poem about the sea, "I love the smell of spring,
# the smell of spring", a list of 20 violins), a phrase occurs 5-33 times or 3-36 % of the
# phrases are distinct. The defaults suit answers of that length; a longer one repeats
# ordinary phrases ("in the world") more often and needs a higher `max_repeats`.
REPEAT_N = 3
REPEAT_MAX = 4
REPEAT_MIN_DISTINCT = 0.5


class NotRepetitive(Check):
    """Fails an output that loops: one word n-gram too often, or too few distinct n-grams.

    `n` (default 3) words make a phrase; the output fails when one phrase occurs more than
    `max_repeats` times (default 4), or when distinct phrases are fewer than `min_distinct`
    (default 0.5) of all phrases. Words are compared after the spec's normalisation (case
    folded by default). An output shorter than `n` words has no phrase to repeat and passes:
    pair this check with `min_words` to require length.
    """

    def score(self, output: str, embed: Embedder | None = None) -> Outcome:
        n = int(self.spec.get("n", REPEAT_N))
        max_repeats = int(self.spec.get("max_repeats", REPEAT_MAX))
        min_distinct = float(self.spec.get("min_distinct", REPEAT_MIN_DISTINCT))
        words, grams = self._grams(self.norm(output))
        total = sum(grams.values())
        if not total:
            return _verdict(True, f"{len(words)} word(s): no {n}-word phrase to repeat")
        ((top, count),) = grams.most_common(1)
        distinct = len(grams) / total
        phrase = " ".join(top)
        if count > max_repeats:
            return _verdict(
                False, f"{phrase!r} occurs {count} times, more than {max_repeats} allowed"
            )
        if distinct < min_distinct:
            return _verdict(
                False,
                f"only {distinct:.0%} of {total} {n}-word phrases are distinct, "
                f"{min_distinct:.0%} needed",
            )
        return _verdict(
            True,
            f"{distinct:.0%} of {n}-word phrases distinct; most frequent {phrase!r} ({count}x)",
        )

    def decide(self, prefix: str) -> bool | None:
        # A phrase counted too often stays too often in every longer output (the share
        # of distinct phrases can still rise, so only the count decides early). Counted
        # in both forms a longer output's normalisation can start with.
        max_repeats = int(self.spec.get("max_repeats", REPEAT_MAX))
        opening = self.norm.opening(prefix)
        if opening is None:
            return None
        for text in (self.norm(prefix), opening):
            _, grams = self._grams(text)
            if not grams or grams.most_common(1)[0][1] <= max_repeats:
                return None
        return False

    def _grams(self, normalised: str) -> tuple[list[str], Counter[tuple[str, ...]]]:
        """The words of a normalised text and the count of each n-word phrase."""
        n = int(self.spec.get("n", REPEAT_N))
        # every number is the same word, so "1. Violin 2. Violin 3. Violin" loops as plainly
        # as "Violin Violin Violin", while "1. Red 2. Blue" stays distinct
        words = ["#" if w.isdigit() else w for w in WORD_RE.findall(normalised)]
        return words, Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


class Similar(Check):
    def score(self, output: str, embed: Embedder | None = None) -> Outcome:
        if embed is None:
            raise InvalidInput("a 'similar' check needs an embedding model to score")
        a, b = embed([self.norm(output), self.norm(self.spec["value"])])
        cosine = sum(x * y for x, y in zip(a, b, strict=True))
        threshold = float(self.spec.get("threshold", 0.8))
        return Outcome(
            cosine >= threshold,
            max(0.0, min(1.0, cosine)),
            f"cosine {cosine:.3f} vs threshold {threshold:g}",
        )


@dataclass(frozen=True)
class Combinator(Check):
    children: tuple[Check, ...] = ()


class AllOf(Combinator):
    def score(self, output: str, embed: Embedder | None = None) -> Outcome:
        outs = [c.score(output, embed) for c in self.children]
        failed = [o.explanation for o in outs if not o.passed]
        return Outcome(
            not failed,
            min(o.score for o in outs),
            "all passed" if not failed else "failed: " + "; ".join(failed),
        )

    def decide(self, prefix: str) -> bool | None:
        verdicts = [c.decide(prefix) for c in self.children]
        if False in verdicts:
            return False
        return True if all(v is True for v in verdicts) else None


class AnyOf(Combinator):
    def score(self, output: str, embed: Embedder | None = None) -> Outcome:
        outs = [c.score(output, embed) for c in self.children]
        passed = [o.explanation for o in outs if o.passed]
        return Outcome(
            bool(passed),
            max(o.score for o in outs),
            "passed: " + passed[0] if passed else "none passed",
        )

    def decide(self, prefix: str) -> bool | None:
        verdicts = [c.decide(prefix) for c in self.children]
        if True in verdicts:
            return True
        return False if all(v is False for v in verdicts) else None


class Not(Combinator):
    def score(self, output: str, embed: Embedder | None = None) -> Outcome:
        inner = self.children[0].score(output, embed)
        return Outcome(not inner.passed, 1.0 - inner.score, f"not ({inner.explanation})")

    def decide(self, prefix: str) -> bool | None:
        inner = self.children[0].decide(prefix)
        return None if inner is None else not inner


# ---------------------------------------------------------------- lenient parts

# Numbers a model often writes out: "A spider has eight legs" states 8.
SPELLED_NUMBERS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty"
)
NUMBER_WORDS = {w: i for i, w in enumerate(SPELLED_NUMBERS.split())}
NUMBER_WORD_RE = re.compile(r"\b(" + "|".join(NUMBER_WORDS) + r")\b", re.IGNORECASE)


def _phrase_re(phrase: str) -> re.Pattern[str]:
    """`phrase` as a whole word or phrase: "8" is not in "18" or "3.8", "no" not in "know"."""
    before = r"(?<!\w)" + (r"(?<!\d[.,])" if phrase[:1].isdigit() else "")
    after = r"(?!\w)" + (r"(?![.,]\d)" if phrase[-1:].isdigit() else "")
    return re.compile(before + re.escape(phrase) + after)


class States(Check):
    """Lenient `exact` / `one_of`: a value occurs in the output as a whole word or phrase."""

    def score(self, output: str, embed: Embedder | None = None) -> Outcome:
        hit = self._hit(self.norm(output))
        return _verdict(
            hit is not None,
            f"states {hit!r}" if hit is not None else f"states none of {self._values()!r}",
        )

    def decide(self, prefix: str) -> bool | None:
        # found in both forms a longer output's normalisation can start with: found for good
        opening = self.norm.opening(prefix)
        if opening is None:
            return None
        for text in (self.norm(prefix), opening):
            if self._hit(text) is None:
                return None
        return True

    def _values(self) -> list[str]:
        return self.spec["values"] if "values" in self.spec else [self.spec["value"]]

    def _hit(self, normalised: str) -> str | None:
        """The first value a normalised text states as a whole word or phrase."""
        return next(
            (
                v
                for v in self._values()
                if self.norm(v) and _phrase_re(self.norm(v)).search(normalised)
            ),
            None,
        )


class StatesNumber(Check):
    """Lenient `number`: any number in the output (digits or zero..twenty) is the value."""

    def score(self, output: str, embed: Embedder | None = None) -> Outcome:
        want = float(self.spec["value"])
        tol = float(self.spec.get("tolerance", 0.0))
        numbers = _numbers(output)
        numbers += [float(NUMBER_WORDS[w.lower()]) for w in NUMBER_WORD_RE.findall(output)]
        hit = next((x for x in numbers if _close(x, want, tol)), None)
        return _verdict(
            hit is not None,
            f"states {hit:g}"
            if hit is not None
            else f"states no number within {tol:g} of {want:g}",
        )

    def decide(self, prefix: str) -> bool | None:
        return True if self.score(prefix).passed else None


def lenient(spec: Any) -> Check | None:
    """The answer-bearing part of a check, scored leniently; None when it expects no answer.

    exact and one_of: a value occurs as a whole word or phrase (normalised as the check
    says); number: any number in the output, digits or a word from zero to twenty, within
    the tolerance; contains: itself; all_of / any_of: all / any of the children that have a
    lenient part. Checks of form or of absence (not, not_contains, max_words, min_words,
    regex, json, similar, not_repetitive) state no answer.
    """
    return _lenient(parse_check(spec))


def _lenient(check: Check) -> Check | None:
    # A lenient check keeps the spec it was derived from: it reads the same values.
    if isinstance(check, Exact | OneOf):
        return States(check.spec, check.norm)
    if isinstance(check, Number):
        return StatesNumber(check.spec, check.norm)
    if isinstance(check, Contains):
        return check
    if isinstance(check, AllOf | AnyOf):
        parts = tuple(p for p in map(_lenient, check.children) if p is not None)
        if not parts:
            return None
        return type(check)(check.spec, check.norm, parts)
    return None


# type -> (class, required fields with their types, optional fields with their types)
TYPES: dict[str, tuple[type[Check], dict[str, Any], dict[str, Any]]] = {
    "exact": (Exact, {"value": str}, {}),
    "one_of": (OneOf, {"values": list}, {}),
    "contains": (Contains, {"values": list}, {"mode": str}),
    "not_contains": (NotContains, {"values": list}, {}),
    "regex": (Regex, {"pattern": str}, {}),
    "json": (Json, {}, {"schema": dict}),
    "number": (Number, {"value": (int, float)}, {"tolerance": (int, float), "first": bool}),
    "max_words": (MaxWords, {"value": int}, {}),
    "min_words": (MinWords, {"value": int}, {}),
    "not_repetitive": (
        NotRepetitive,
        {},
        {"n": int, "max_repeats": int, "min_distinct": (int, float)},
    ),
    "similar": (Similar, {"value": str}, {"threshold": (int, float)}),
    "all_of": (AllOf, {"checks": list}, {}),
    "any_of": (AnyOf, {"checks": list}, {}),
    "not": (Not, {"check": dict}, {}),
}
COMMON = {
    "type": str,
    "version": int,
    "strict": bool,
    "case_sensitive": bool,
    "keep_punctuation": bool,
    "unicode_form": str,
}


MAX_DEPTH = 16  # nesting of all_of / any_of / not


def parse_check(spec: Any, where: str = "expected", depth: int = 0) -> Check:
    """Validate a check spec and build its check; errors name the field (`where`)."""
    if depth > MAX_DEPTH:
        raise InvalidInput(f"{where}: checks nest at most {MAX_DEPTH} deep")
    if not isinstance(spec, dict):
        raise InvalidInput(f"{where}: a check must be a JSON object, got {type(spec).__name__}")
    kind = spec.get("type")
    if kind not in TYPES:
        raise InvalidInput(
            f"{where}.type {kind!r}: unknown check type; allowed: {', '.join(TYPES)}"
        )
    cls, required, optional = TYPES[kind]
    allowed = {**COMMON, **required, **optional}
    for key, value in spec.items():
        if key not in allowed:
            raise InvalidInput(
                f"{where}.{key}: unknown field for a {kind} check; allowed: "
                f"{', '.join(sorted(allowed))}"
            )
        if not isinstance(value, allowed[key]) or (
            isinstance(value, bool) and allowed[key] in (int, (int, float))
        ):
            raise InvalidInput(f"{where}.{key}: {value!r} has the wrong type for a {kind} check")
    for key in required:
        if key not in spec:
            raise InvalidInput(f"{where}.{key}: required for a {kind} check")
    version = spec.get("version", CHECK_VERSION)
    if version > CHECK_VERSION:
        raise InvalidInput(
            f"{where}.version {version}: this hub knows check versions up to {CHECK_VERSION}"
        )
    _validate_values(kind, spec, where)
    if spec.get("unicode_form", "NFKC") not in UNICODE_FORMS:
        raise InvalidInput(
            f"{where}.unicode_form {spec['unicode_form']!r}: allowed {', '.join(UNICODE_FORMS)}"
        )
    norm = Normalizer(
        spec.get("strict", False),
        spec.get("case_sensitive", False),
        spec.get("keep_punctuation", False),
        spec.get("unicode_form", "NFKC"),
    )
    full = {**spec, "version": version}
    if issubclass(cls, Combinator):
        subs = spec["checks"] if "checks" in spec else [spec["check"]]
        if not subs:
            raise InvalidInput(f"{where}.checks: needs at least one check")
        field_name = "checks" if "checks" in spec else "check"
        children = tuple(
            parse_check(
                c,
                f"{where}.{field_name}[{i}]" if field_name == "checks" else f"{where}.check",
                depth + 1,
            )
            for i, c in enumerate(subs)
        )
        return cls(full, norm, children)
    return cls(full, norm)


def _validate_values(kind: str, spec: dict[str, Any], where: str) -> None:
    if "values" in spec and (
        not spec["values"] or not all(isinstance(v, str) for v in spec["values"])
    ):
        raise InvalidInput(f"{where}.values: a non-empty list of strings is needed")
    if kind in ("contains", "not_contains", "one_of"):
        norm = Normalizer(
            spec.get("strict", False),
            spec.get("case_sensitive", False),
            spec.get("keep_punctuation", False),
        )
        empty = [v for v in spec["values"] if not norm(v)]
        if empty:
            raise InvalidInput(
                f"{where}.values: {empty!r} is empty once normalised "
                "(it would match anything); use strict or drop it"
            )
    if kind == "regex":
        if len(spec["pattern"]) > MAX_PATTERN_CHARS:
            raise InvalidInput(f"{where}.pattern: at most {MAX_PATTERN_CHARS} characters")
        try:
            compile_pattern(spec["pattern"], False)
        except InvalidInput as e:
            raise InvalidInput(f"{where}.{e}") from e
    if kind == "json" and "schema" in spec:
        import jsonschema

        _check_local_refs(spec["schema"], f"{where}.schema")
        try:
            jsonschema.Draft202012Validator.check_schema(spec["schema"])
        except jsonschema.SchemaError as e:
            raise InvalidInput(f"{where}.schema: not a valid JSON Schema: {e.message}") from e
    if kind == "number":
        for key in ("value", "tolerance"):
            if key in spec and not math.isfinite(spec[key]):
                raise InvalidInput(f"{where}.{key}: must be a finite number")
        if spec.get("tolerance", 0) < 0:
            raise InvalidInput(f"{where}.tolerance: must be 0 or more")
    if kind == "max_words" and spec["value"] < 0:
        raise InvalidInput(f"{where}.value: must be 0 or more")
    if kind == "min_words" and spec["value"] < 1:
        raise InvalidInput(
            f"{where}.value {spec['value']}: a min_words check needs 1 or more words"
        )
    if kind == "not_repetitive":
        if not 1 <= spec.get("n", REPEAT_N) <= 10:
            raise InvalidInput(f"{where}.n {spec['n']}: allowed 1 to 10 words per phrase")
        if spec.get("max_repeats", REPEAT_MAX) < 1:
            raise InvalidInput(f"{where}.max_repeats {spec['max_repeats']}: must be 1 or more")
        min_distinct = spec.get("min_distinct", REPEAT_MIN_DISTINCT)
        if not (math.isfinite(min_distinct) and 0 <= min_distinct <= 1):
            raise InvalidInput(
                f"{where}.min_distinct {min_distinct!r}: allowed 0 to 1 (a share of phrases)"
            )
    if kind == "contains" and spec.get("mode", "any") not in ("any", "all"):
        raise InvalidInput(f"{where}.mode {spec['mode']!r}: allowed: any, all")
    if kind == "similar" and not 0 < float(spec.get("threshold", 0.8)) <= 1:
        raise InvalidInput(f"{where}.threshold: allowed 0 < threshold <= 1")
