"""The general-behaviour guard: a suite every imported model gets, so a fix cannot break it.

A model pull request is judged on the reports it claims to fix, and on this guard:
sixty ordinary instructions (lists, explanations, short stories, how-tos and
a few facts asked as full questions) whose checks look at the form of the answer, not
its finer content. They catch a candidate that has become terse (fine-tuned to answer
everything in one word), repetitive (caught in a loop) or broken (empty, or no longer
knowing what every model knows: that Paris is the capital of France).

Each case's check is `all_of(min_words N, not_repetitive)`, plus, for a list, three
list items on their own lines, and for a fact, the trivial fact itself. The cases were
chosen on SmolLM2-135M-Instruct, the bundled model, with greedy decoding and
`GUARD_MAX_NEW_TOKENS`: it passes all of them (a guard case the base fails says
nothing about a candidate), while a one-word answer fails every one. Instructions on
which it loops by itself at 128 tokens (a poem about the sea, a robot who learns to
paint, how to make tea or boil an egg, a list of musical instruments, five vegetables,
sports with a ball, who wrote Romeo and Juliet) were left out.

**Noise floor.** A guard case must not flip when nothing harmful changed. Three "null"
adapters, trained with the default recipe on nothing but the base's own answers (seeds
0-2), broke 1-3 of the 48 cases of version 2 each: "What is the boiling point of
water?" wandered off before saying 100, "Tell me about the Moon." never named the
Earth, a list of weather kinds looped just past the repetition limit, the ocean
animals' list lost its line breaks. Version 3 keeps only cases that the base and all
three null adapters pass: 60 of 67 candidates (a fourth null adapter, seed 3, not used
to choose, is measured in docs/training.md). Sixty cases also let the non-inferiority
rule resolve its margin: at 10 %, two broken cases pass and three fail.

The suite holds nothing out (every case is public: there is nothing here to fit to that
a contributor should not see), and its versions never change: a new set of guard cases
is a new version holding exactly that set, and old results keep naming the version they
were measured on.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from upstream.db.schema import Suite
from upstream.errors import InvalidInput
from upstream.registry import NAME_RE, import_model
from upstream.suites import CaseIn, add_cases

if TYPE_CHECKING:
    from upstream.hub import Hub
    from upstream.jobs import JobContext

# New tokens generated per guard case. At 96 the bundled model writes 60-85 words when it
# has more to say, enough for a loop of up to ~35 words to show itself; at 128 it starts
# looping by itself on more instructions, which would make the guard flaky for candidates
# that are as good as the base. 60 cases take ~20 s on 2 CPU cores.
GUARD_MAX_NEW_TOKENS = 96
GUARD_PREFIX = "guard-"
SUITE_KIND = "guard"
KINDS = ("list", "explanation", "story", "howto", "fact")

# Three list items, each on its own line: "1." / "2)" / "-" / "*" / "•", then text with a
# letter in it (so "1. 2. 3. 4." on one line, a model counting instead of answering, fails).
LIST_ITEM = r"[ \t]*(?:\d{1,2}[.)]|[-*+•])[ \t]+[^\n]*?[^\W\d_]"
THREE_ITEMS = rf"(?m)^{LIST_ITEM}(?:.*\n)+?{LIST_ITEM}(?:.*\n)+?{LIST_ITEM}"


@dataclass(frozen=True)
class GuardCase:
    kind: str  # one of KINDS, also the case's tag
    prompt: str
    # The fewest words a sound answer has: about half of what the base writes within
    # GUARD_MAX_NEW_TOKENS (a list of single words has few), far above one word.
    min_words: int
    facts: tuple[str, ...] = ()  # trivial facts the answer must mention (all of them)


CASES: tuple[GuardCase, ...] = (
    GuardCase("list", "List five fruits.", 5),
    GuardCase("list", "Name five colours, as a numbered list.", 5),
    GuardCase("list", "List three things you can do on a rainy day.", 8),
    GuardCase("list", "List three tips for staying healthy.", 15),
    GuardCase("list", "List three things you might find in a kitchen.", 8),
    GuardCase("list", "List four things people do to relax.", 8),
    GuardCase("list", "List three reasons to read books.", 15),
    GuardCase("list", "List three things you can do at a library.", 8),
    GuardCase("list", "List three ways to be kind to others.", 8),
    GuardCase("explanation", "Explain what photosynthesis is.", 30),
    GuardCase("explanation", "Explain why people need sleep.", 30),
    GuardCase("explanation", "What is the difference between weather and climate?", 30),
    GuardCase("explanation", "Explain how rain forms.", 30),
    GuardCase("explanation", "Explain why exercise is good for you.", 30),
    GuardCase("explanation", "Explain what a volcano is.", 30),
    GuardCase("explanation", "Explain how a plant grows from a seed.", 30),
    GuardCase("explanation", "Explain why we have seasons.", 30),
    GuardCase("explanation", "Explain what gravity does.", 30),
    GuardCase("explanation", "Explain why recycling is important.", 30),
    GuardCase("explanation", "Explain how the heart works.", 30),
    GuardCase("explanation", "Explain what a computer does.", 30),
    GuardCase("explanation", "Explain why the ocean is salty.", 30),
    GuardCase("explanation", "Explain what a calendar is used for.", 30),
    GuardCase("explanation", "Explain why people wear coats in winter.", 30),
    GuardCase("story", "Write a short story about a boy and his dog.", 30),
    GuardCase("story", "Write a short story about a girl who plants a garden.", 30),
    GuardCase("story", "Write a short story about a lost balloon.", 30),
    GuardCase("story", "Write a short story about two friends on a camping trip.", 30),
    GuardCase("story", "Write a short story about a cat who finds a new home.", 30),
    GuardCase("story", "Write a short story about a rainy day at school.", 30),
    GuardCase("story", "Write a short story about a child who learns to ride a bike.", 30),
    GuardCase("story", "Write a short story about a family trip to the mountains.", 30),
    GuardCase("story", "Write a short story about a baker who makes a giant cake.", 30),
    GuardCase("story", "Write a short story about a bird that cannot sing.", 30),
    GuardCase("story", "Write a short story about a boy who finds a key.", 30),
    GuardCase("story", "Write a short story about a turtle who wants to win a race.", 30),
    GuardCase("howto", "How do I plant a tree?", 30),
    GuardCase("howto", "How can I learn a new language?", 30),
    GuardCase("howto", "How do I write a good email?", 30),
    GuardCase("howto", "How do I wash my hands properly?", 30),
    GuardCase("howto", "How do I take care of a houseplant?", 30),
    GuardCase("howto", "How do I make a sandwich?", 30),
    GuardCase("howto", "How can I study better for exams?", 30),
    GuardCase("howto", "How do I start running as a beginner?", 30),
    GuardCase("howto", "How do I keep my room tidy?", 30),
    GuardCase("howto", "How can I sleep better at night?", 30),
    GuardCase("howto", "How do I make new friends?", 30),
    GuardCase("howto", "How do I save money?", 30),
    GuardCase("howto", "How do I prepare for a job interview?", 30),
    GuardCase("fact", "What is the capital of France, and why is it famous?", 10, ("Paris",)),
    GuardCase("fact", "What is water made of?", 10, ("hydrogen", "oxygen")),
    GuardCase("fact", "What is the largest ocean on Earth?", 5, ("Pacific",)),
    GuardCase("fact", "Who was Albert Einstein?", 10, ("physicist",)),
    GuardCase("fact", "What is the capital of Japan, and what is it known for?", 10, ("Tokyo",)),
    GuardCase("fact", "What do plants need to grow?", 10, ("water",)),
    GuardCase("fact", "What is the chemical symbol for gold?", 5, ("Au",)),
    GuardCase("fact", "What is the tallest mountain in the world?", 5, ("Everest",)),
    GuardCase("fact", "What is the capital of Italy, and what is it known for?", 10, ("Rome",)),
    GuardCase("fact", "What is the capital of Germany, and what is it known for?", 10, ("Berlin",)),
    GuardCase("fact", "What is the Sun?", 10, ("star",)),
)


def guard_check(case: GuardCase) -> dict[str, Any]:
    """The check spec of a guard case."""
    checks: list[dict[str, Any]] = [
        {"type": "min_words", "value": case.min_words},
        {"type": "not_repetitive"},
    ]
    if case.kind == "list":
        checks.append({"type": "regex", "pattern": THREE_ITEMS})
    for fact in case.facts:
        # a whole word (or its plural): a substring would find "Au" in "because", "star"
        # in "start"
        checks.append({"type": "regex", "pattern": rf"\b{re.escape(fact)}s?\b"})
    return {"type": "all_of", "checks": checks}


def guard_cases() -> list[CaseIn]:
    """The guard cases, ready for `suites.add_cases`."""
    return [
        CaseIn(
            messages=[{"role": "user", "content": c.prompt}],
            expected=guard_check(c),
            tags=["guard", c.kind],
            source="guard",
        )
        for c in CASES
    ]


def guard_suite_name(model: str) -> str:
    """`guard-<model>`, made a valid suite name (lowercase, allowed characters, ≤ 100)."""
    name = GUARD_PREFIX + re.sub(r"[^a-z0-9._-]+", "-", model.lower())
    if len(name) > 100:  # keep it unique: a hash of the whole model name ends it
        digest = hashlib.sha256(model.encode()).hexdigest()[:8]
        name = f"{name[:91]}-{digest}"
    assert NAME_RE.match(name), name
    return name


def ensure_guard_suite(hub: Hub, model: str) -> str:
    """Create the guard suite of `model` (a model name) if it lacks one; returns its name.

    Idempotent: when the suite's newest version is exactly the guard cases, nothing is
    written; otherwise a new version holds exactly them.
    """
    model = model.partition("@")[0]
    name = guard_suite_name(model)
    with hub.session() as s:
        kind = s.scalar(select(Suite.kind).where(Suite.name == name))
    if kind is not None and kind != SUITE_KIND:
        raise InvalidInput(
            f"suite {name} exists and is a {kind} suite, not the guard of model {model}; "
            "rename it to let the hub make the guard suite"
        )
    add_cases(
        hub,
        name,
        guard_cases(),
        model=model,
        heldout_percent=0,
        note="general-behaviour guard cases",
        kind=SUITE_KIND,
        exact=True,  # a new guard set replaces the old one (fragile cases leave)
    )
    return name


def run_import_job(ctx: JobContext) -> dict[str, Any]:
    """Job handler for `models.import`: the new revision, and its model's guard suite."""
    result = import_model(ctx.hub, ctx.args["source"], ctx.args["name"], ctx.progress)
    ensure_guard_suite(ctx.hub, ctx.args["name"])
    return result.as_dict()
