"""The loop on the real model: one-word failures filed and confirmed, a suite built from
them, a dataset contribution that fixes them, and one that breaks the guard suite.

Driven through the CLI as a user would; one hub for the module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import upstream as upstream_package
from upstream.hub import Hub

pytestmark = pytest.mark.smollm2
NAME = "smollm2-135m-instruct"
DATA = Path(__file__).parent / "data"
DEMO_DATA = Path(upstream_package.__file__).parent / "data"  # shipped: `upstream demo` uses it


def upstream(hub: Hub, *args: str) -> Any:
    env = {**os.environ, "UPSTREAM_HOME": str(hub.settings.home), "COLUMNS": "200"}
    out = subprocess.run(
        [sys.executable, "-m", "upstream", *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def one_word(smol_hub: Hub) -> list[int]:
    """The one-word failures filed, reproduced, confirmed, and built into a suite."""
    filed = upstream(
        smol_hub,
        "reports",
        "file",
        "--jsonl",
        str(DEMO_DATA / "one_word_failures.jsonl"),
        "--model",
        NAME,
    )
    ids = [r["id"] for r in filed["filed"]]
    upstream(smol_hub, "reports", "confirm", *map(str, ids))
    built = upstream(smol_hub, "suites", "build", "one-word", "--tag", "one-word", "--model", NAME)
    assert built["cases"] == 14
    return ids


def test_a_one_word_dataset_fixes_heldout_cases(smol_hub: Hub, one_word: list[int]) -> None:
    pr = upstream(
        smol_hub,
        "contribute",
        "--model",
        NAME,
        "--dataset",
        str(DEMO_DATA / "one_word_answers.jsonl"),
        "--fixes",
        ",".join(map(str, one_word)),
        "--title",
        "Answer one-word questions in one word",
    )
    training = pr["training"]
    # the 25 contributed answers and the base's own answers to 50 ordinary prompts
    assert (training["examples"], training["replayed"]) == (75, 50)
    assert training["last_loss"] < training["first_loss"]
    suites = {r["suite"]: r for r in pr["checks"]["suites"]}
    claims = suites[f"claims-pr-{pr['id']}"]["splits"]["all"]
    assert claims["fixed_count"] >= 7, pr["checks"]["reasons"]
    held = suites["one-word"]["splits"]["heldout"]
    assert held["fixed_count"] >= 1, pr["checks"]["reasons"]
    assert held["cand_rate"] > held["base_rate"]
    guard = suites[f"guard-{NAME}"]["splits"]["all"]
    assert pr["checks"]["reasons"][0].startswith("✓ fixes")
    # whatever guard cases it broke are reported, by count and by prompt
    assert guard["broken_count"] == len(guard["broken"])
    print(json.dumps(pr["checks"]["reasons"], indent=1, ensure_ascii=False))


def test_a_model_that_answers_everything_in_one_word_fails(smol_hub: Hub) -> None:
    pr = upstream(
        smol_hub,
        "contribute",
        "--model",
        NAME,
        "--dataset",
        str(DATA / "one_word_everything.jsonl"),
        "--title",
        "Be concise",
    )
    assert pr["state"] == "failed"
    guard = next(r for r in pr["checks"]["suites"] if r["kind"] == "guard")
    assert guard["splits"]["all"]["broken_count"] >= 5
    reason = next(r for r in pr["checks"]["reasons"] if r.startswith(f"✗ guard-{NAME}"))
    assert "significant regression" in reason and "broken: “" in reason
    print(json.dumps(pr["checks"]["reasons"], indent=1, ensure_ascii=False))
