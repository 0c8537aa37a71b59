"""Model cards: front matter the Hub reads, and Markdown tables that stay tables."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from upstream.modelcard import render_card

REV = "b" * 64
BASE_REV = "a" * 64
INFO: dict[str, Any] = {
    "model": "smol",
    "revision": REV,
    "tag": "v2",
    "base": {"model": "smol", "revision": BASE_REV, "tag": "v1"},
    "license": "apache-2.0",
    "method": "ties",
    "params": {"density": 0.5, "weights": [1.0, 0.5], "seed": 0},
    "versions": {"torch": "2.13.0", "transformers": "5.1.0", "peft": "0.17.1"},
    "created_at": "2025-06-01T12:00:00+00:00",
    "contributions": [
        {
            "id": 4,
            "title": "One-word answers",
            "author": "gil",
            "kind": "dataset",
            "fixes": [1, 2],
            "retention": {"fixed_alone": 4, "retained": 3, "retention": 0.75},
        }
    ],
    "reports_fixed": [{"id": 1, "prompt": "Capital of France?", "reporter": "ana"}],
    "results": [
        {
            "suite": "one-word",
            "version": 3,
            "n": 40,
            "rate": 0.8,
            "low": 0.65,
            "high": 0.9,
            "base_rate": 0.5,
            "base_low": 0.35,
            "base_high": 0.65,
            "heldout": {"n": 12, "rate": 0.75, "low": 0.47, "high": 0.91},
        },
        {
            "suite": "guard-smol",
            "version": 1,
            "n": 20,
            "rate": 0.95,
            "low": 0.76,
            "high": 0.99,
            "base_rate": 0.95,
            "base_low": 0.76,
            "base_high": 0.99,
            "heldout": None,
        },
    ],
    "credits": [{"user": "gil", "points": 8.0, "roles": {"contributor": 1}}],
}


def split(card: str) -> tuple[dict[str, Any], str]:
    assert card.startswith("---\n")
    head, _, body = card[4:].partition("\n---\n")
    return yaml.safe_load(head), body


def section(body: str, title: str) -> str:
    start = body.index(f"\n## {title}\n")
    end = body.find("\n## ", start + 1)
    return body[start : end if end >= 0 else None]


def table_rows(text: str) -> list[list[str]]:
    """Cells of each table row, split on unescaped pipes as a Markdown renderer does."""
    rows = []
    for line in text.splitlines():
        if line.startswith("|"):
            cells = line.replace("\\|", "\0").strip("|").split("|")
            rows.append([c.strip().replace("\0", "|") for c in cells])
    return rows


def test_front_matter_is_hugging_face_metadata() -> None:
    front, _ = split(render_card(INFO))
    assert front["license"] == "apache-2.0"
    assert front["base_model"] == "smol"
    assert front["tags"] == ["upstream", "lora-merge", "ties"]
    assert front["library_name"] == "transformers"
    assert front["pipeline_tag"] == "text-generation"
    (entry,) = front["model-index"]
    assert entry["name"] == "smol"
    first, second = entry["results"]
    assert first == {
        "task": {"type": "text-generation"},
        "dataset": {"name": "one-word", "type": "upstream/one-word", "revision": "v3"},
        "metrics": [{"type": "pass_rate", "value": 0.8, "name": "pass rate"}],
    }
    assert second["dataset"]["revision"] == "v1"
    assert second["metrics"][0]["value"] == 0.95


def test_sections_and_their_content() -> None:
    _, body = split(render_card(INFO))
    assert body.lstrip().startswith("# smol v2\n")
    for title in (
        "What changed",
        "Reports fixed",
        "Contributions merged",
        "Evaluation",
        "Credits",
        "Provenance",
    ):
        assert f"\n## {title}\n" in body
    changed = section(body, "What changed")
    assert "`ties`" in changed and '"density": 0.5' in changed and "v1" in changed
    assert table_rows(section(body, "Reports fixed"))[2] == ["#1", "Capital of France?", "ana"]
    contribution = table_rows(section(body, "Contributions merged"))[2]
    assert contribution[:5] == ["#4", "One-word answers", "gil", "dataset", "#1, #2"]
    assert contribution[5] == "3 of 4 cases (75%)"
    evaluation = table_rows(section(body, "Evaluation"))
    assert evaluation[0][-1] == "held-out"
    assert evaluation[2] == [
        "one-word",
        "v3",
        "40",
        "50.0% (35.0%–65.0%)",
        "80.0% (65.0%–90.0%)",
        "12 cases: 75.0% (47.0%–91.0%)",
    ]
    assert evaluation[3][-1] == "—"  # the guard suite has no held-out split
    assert table_rows(section(body, "Credits"))[2] == ["gil", "8", "contributor ×1"]
    provenance = section(body, "Provenance")
    assert REV in provenance and BASE_REV in provenance
    assert "transformers 5.1.0" in provenance and "2025-06-01" in provenance


def test_a_hostile_prompt_stays_in_its_cell() -> None:
    info = copy.deepcopy(INFO)
    prompt = "Say a | b\nthen <b>bold</b> and " + "x" * 200
    info["reports_fixed"] = [{"id": 7, "prompt": prompt, "reporter": "eve|l"}]
    info["contributions"][0]["title"] = "line one\nline | two"

    _, body = split(render_card(info))

    reports = section(body, "Reports fixed")
    rows = table_rows(reports)
    assert len(rows) == 3 and all(len(r) == 3 for r in rows)  # header, rule, one row
    report_id, shown, reporter = rows[2]
    assert report_id == "#7" and reporter == "eve|l"
    assert shown.startswith("Say a | b then &lt;b>bold")
    assert len(shown.replace("&lt;", "<")) <= 80 and shown.endswith("…")  # 80 characters shown
    assert "<b>" not in reports
    contributions = table_rows(section(body, "Contributions merged"))
    assert len(contributions[2]) == 6 and contributions[2][1] == "line one line | two"


def test_missing_optional_parts_render_sensibly() -> None:
    info = {
        "model": "smol",
        "revision": REV,
        "tag": "v2",
        "base": {"model": "smol", "revision": BASE_REV, "tag": None},
        "method": "linear",
        "params": {},
        "versions": {},
        "created_at": "2025-06-01",
        "contributions": [],
        "reports_fixed": [],
        "results": [{**INFO["results"][1]}],
        "credits": [],
    }
    card = render_card(info)
    front, body = split(card)
    assert front["license"] == "other"
    assert front["tags"] == ["upstream", "lora-merge", "linear"]
    assert "None: this revision merges no contribution." in body
    assert "No report was marked fixed" in body
    assert "No credits were recorded" in body
    evaluation = table_rows(section(body, "Evaluation"))
    assert "held-out" not in evaluation[0] and len(evaluation[2]) == 5
    assert "Held-out cases" not in body
    assert "None" not in body.replace("None: this", "")  # no Python None leaks into the text

    bare = render_card({"model": "smol", "revision": REV, "tag": "v2", "method": "linear"})
    front, body = split(bare)
    assert "model-index" not in front  # the Hub refuses an entry with no results
    assert "No suite was evaluated" in body and "## Provenance" in body
