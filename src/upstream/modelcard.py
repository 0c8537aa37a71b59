"""Model cards: the README.md of a released revision.

A card is YAML front matter in the Hugging Face format (licence, base model, tags and a
`model-index` of the suite results, so the Hub shows them) and Markdown sections: what
changed, the reports fixed, the contributions merged, the evaluation, the credits and
the provenance. `render_card` takes plain data, so the release job, an export and a
test all render the same card.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

PROMPT_CHARS = 80  # a table cell, not the case: the full prompt is in the suite
NONE = "—"


def render_card(info: dict[str, Any]) -> str:
    """The model card (README.md text) of a released revision.

    `info`, all plain data (optional keys may be missing or None):

    - "model": the model name; "revision": the revision hash; "tag": its release tag
      ("v2"); "base": {"model", "revision", "tag"} of the revision merged into;
    - "license": an SPDX-like id ("apache-2.0"; missing → "other");
    - "method": the merge method ("linear", "ties", …); "params": its parameters;
      "versions": {library: version} used to make it; "created_at": an ISO date;
    - "contributions": [{"id", "title", "author", "kind", "fixes": [report ids],
      "retention": {"fixed_alone", "retained", "retention"} or None}];
    - "reports_fixed": [{"id", "prompt", "reporter"}];
    - "results": [{"suite", "version", "n", "rate", "low", "high", "base_rate",
      "base_low", "base_high", "heldout": {"n", "rate", "low", "high"} or None}],
      rates and bounds as fractions (0..1), bounds of the 95 % Wilson interval;
    - "credits": [{"user", "points", "roles": {role: count}}].
    """
    sections = [
        _title(info),
        _what_changed(info),
        _reports_fixed(info.get("reports_fixed") or []),
        _contributions(info.get("contributions") or []),
        _evaluation(info.get("results") or []),
        _credits(info.get("credits") or []),
        _provenance(info),
    ]
    return f"---\n{_front_matter_yaml(info)}---\n\n" + "\n\n".join(sections) + "\n"


def front_matter(info: dict[str, Any]) -> dict[str, Any]:
    """The card's metadata in the Hugging Face format (`model-index` only with results)."""
    base = info.get("base") or {}
    front: dict[str, Any] = {
        "license": info.get("license") or "other",
        "base_model": base.get("model") or info["model"],
        "tags": ["upstream", "lora-merge", info.get("method") or "unknown"],
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
    }
    results = [
        {
            "task": {"type": "text-generation"},
            "dataset": {
                "name": r["suite"],
                "type": f"upstream/{r['suite']}",
                "revision": f"v{r['version']}",
            },
            "metrics": [{"type": "pass_rate", "value": round(r["rate"], 4), "name": "pass rate"}],
        }
        for r in info.get("results") or []
        if r.get("rate") is not None
    ]
    if results:  # the Hub refuses a model-index entry without results
        front["model-index"] = [{"name": info["model"], "results": results}]
    return front


# ---------------------------------------------------------------- sections


def _front_matter_yaml(info: dict[str, Any]) -> str:
    text: str = yaml.safe_dump(
        front_matter(info), sort_keys=False, allow_unicode=True, default_flow_style=False
    )
    return text


def _title(info: dict[str, Any]) -> str:
    name = info.get("tag") or str(info.get("revision", ""))[:12]
    return f"# {info['model']} {name}".rstrip()


def _what_changed(info: dict[str, Any]) -> str:
    base = info.get("base") or {}
    base_name = _ref(base.get("model") or info["model"], base.get("tag"), base.get("revision"))
    n = len(info.get("contributions") or [])
    merged = f"{n} contribution{'s' if n != 1 else ''}" if n else "no contributions"
    fixed = len(info.get("reports_fixed") or [])
    lines = [
        "## What changed",
        "",
        f"Made by an Upstream hub from {base_name}: {merged} merged with the "
        f"`{info.get('method') or 'unknown'}` method, fixing {fixed} reported "
        f"failure{'s' if fixed != 1 else ''}.",
    ]
    params = info.get("params") or {}
    if params:
        lines += ["", "Merge parameters:", "", "```json", json.dumps(params, indent=2), "```"]
    return "\n".join(lines)


def _reports_fixed(reports: list[dict[str, Any]]) -> str:
    if not reports:
        return "## Reports fixed\n\nNo report was marked fixed by this revision."
    rows = [
        [f"#{r['id']}", _short(str(r.get("prompt", ""))), r.get("reporter", "")] for r in reports
    ]
    return "## Reports fixed\n\n" + _table(["report", "prompt", "reporter"], rows)


def _contributions(contributions: list[dict[str, Any]]) -> str:
    if not contributions:
        return "## Contributions merged\n\nNone: this revision merges no contribution."
    rows = [
        [
            f"#{c['id']}",
            c.get("title", ""),
            c.get("author", ""),
            c.get("kind", ""),
            ", ".join(f"#{i}" for i in c.get("fixes") or []) or NONE,
            _retention(c.get("retention")),
        ]
        for c in contributions
    ]
    header = ["contribution", "title", "author", "kind", "fixes", "retained after merge"]
    note = (
        "\n\n*Retained after merge*: of the cases a contribution fixed on its own, how many "
        "this merged revision still passes."
    )
    return "## Contributions merged\n\n" + _table(header, rows) + note


def _evaluation(results: list[dict[str, Any]]) -> str:
    if not results:
        return "## Evaluation\n\nNo suite was evaluated for this revision."
    held = any(r.get("heldout") for r in results)
    header = ["suite", "version", "cases", "base pass rate", "this revision"]
    if held:
        header.append("held-out")
    rows = []
    for r in results:
        row = [
            r["suite"],
            f"v{r['version']}",
            str(r.get("n", "")),
            _rate(r.get("base_rate"), r.get("base_low"), r.get("base_high")),
            _rate(r.get("rate"), r.get("low"), r.get("high")),
        ]
        if held:
            h = r.get("heldout")
            row.append(f"{h['n']} cases: {_rate(h['rate'], h['low'], h['high'])}" if h else NONE)
        rows.append(row)
    notes = "Pass rates with their 95 % Wilson interval; greedy generation."
    if held:
        notes += (
            " Held-out cases are kept private to detect overfitting; only their count and pass "
            "rate are published."
        )
    return "## Evaluation\n\n" + _table(header, rows) + "\n\n" + notes


def _credits(credits: list[dict[str, Any]]) -> str:
    if not credits:
        return "## Credits\n\nNo credits were recorded for this revision."
    rows = [
        [
            c["user"],
            f"{c.get('points', 0):g}",
            ", ".join(f"{role} ×{n}" for role, n in (c.get("roles") or {}).items()),
        ]
        for c in credits
    ]
    return "## Credits\n\n" + _table(["user", "points", "roles"], rows)


def _provenance(info: dict[str, Any]) -> str:
    base = info.get("base") or {}
    versions = info.get("versions") or {}
    base_tag = f" {base['tag']}" if base.get("tag") else ""
    lines = [
        "## Provenance",
        "",
        f"- Revision: `{info.get('revision', '')}`",
        f"- Base: `{base.get('model') or info['model']}`{base_tag} "
        f"`{base.get('revision') or 'unknown'}`",
        f"- Method: `{info.get('method') or 'unknown'}`",
        "- Libraries: "
        + (", ".join(f"{lib} {v}" for lib, v in sorted(versions.items())) or "not recorded"),
        f"- Created: {info.get('created_at') or 'unknown'}",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- formatting


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    """Text safe in one Markdown table cell: one line, no column breaks, no raw HTML."""
    text = " ".join(str(value).split())
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;") or " "


def _short(text: str, n: int = PROMPT_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _rate(rate: float | None, low: float | None, high: float | None) -> str:
    if rate is None:
        return NONE
    if low is None or high is None:
        return f"{rate:.1%}"
    return f"{rate:.1%} ({low:.1%}–{high:.1%})"


def _retention(r: dict[str, Any] | None) -> str:
    if not r:
        return NONE
    share = r.get("retention")
    ratio = f"{r.get('retained', 0)} of {r.get('fixed_alone', 0)} cases"
    return ratio + (f" ({share:.0%})" if share is not None else "")


def _ref(model: str, tag: str | None, revision: str | None) -> str:
    name = f"`{model}@{revision[:12]}`" if revision else f"`{model}`"
    return f"{name} ({tag})" if tag else name
