"""Prompts for speed benchmarks: about a hundred short, varied instructions, and a
hundred questions asking for a one-word answer."""

import json
from itertools import zip_longest
from pathlib import Path
from typing import Any

COUNTRIES = [
    "France",
    "Japan",
    "Kenya",
    "Peru",
    "Canada",
    "Italy",
    "Egypt",
    "Norway",
    "India",
    "Chile",
]
WORDS = ["hot", "fast", "happy", "early", "light", "open", "strong", "quiet", "rich", "full"]
NOUNS = ["mouse", "child", "city", "knife", "tooth", "leaf", "box", "person", "wolf", "cactus"]
TOPICS = [
    "rain",
    "the sea",
    "a library",
    "autumn",
    "a train",
    "bread",
    "the moon",
    "a cat",
    "a bridge",
    "coffee",
]
THINGS = [
    "photosynthesis",
    "a noun",
    "gravity",
    "an atom",
    "democracy",
    "a volcano",
    "inflation",
    "a verb",
    "DNA",
    "an eclipse",
]


def instructions() -> list[str]:
    out: list[str] = []
    for i in range(10):
        out += [
            f"What is the capital of {COUNTRIES[i]}?",
            f"What is the opposite of {WORDS[i]}? Answer with one word.",
            f"What is the plural of {NOUNS[i]}?",
            f"Write a haiku about {TOPICS[i]}.",
            f"Explain {THINGS[i]} in one sentence.",
            f"What is {i + 3} times {i + 7}?",
            f"Give me three words that rhyme with {WORDS[i]}.",
            f"Name a famous person from {COUNTRIES[i]}.",
            f"Write one sentence about {TOPICS[i]} for a child.",
            f"Is {NOUNS[i]} a noun or a verb?",
        ]
    return out


FAMILIES = Path(__file__).parent / "families"


def format_questions(n: int = 100) -> list[tuple[str, dict[str, Any]]]:
    """Questions that ask for one word, a number or yes/no, with their `exact` checks: the
    reports and unseen prompts of benchmarks/families/, as reports of ignored formats
    are. The bundled model mostly answers them at length ("A spider has eight legs...")."""
    per_family = []
    for family in sorted(FAMILIES.iterdir()):
        rows = []
        for name in ("reports.jsonl", "unseen.jsonl"):
            for line in (family / name).read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    rows.append((row["prompt"], row["expected"]))
        per_family.append(rows)
    # one family after another, in turn, so that any first n hold all three kinds
    mixed = [r for group in zip_longest(*per_family) for r in group if r is not None]
    if len(mixed) < n:
        raise SystemExit(f"only {len(mixed)} format questions in {FAMILIES}")
    return mixed[:n]
