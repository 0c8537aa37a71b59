"""`upstream feedback`: what users of served models said, and corrections as training data."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from upstream import feedback as domain
from upstream.cli.common import (
    AsOption,
    JsonOption,
    console,
    current_actor,
    emit_json,
    err_console,
    number_list,
    open_hub,
)

app = typer.Typer(
    help="Feedback on served answers: list it, count it, export corrections.",
    no_args_is_help=True,
)


@app.command("list")
def list_(
    model: str = typer.Option(None, "--model", help="Only NAME (or NAME@REV)."),
    negative: bool = typer.Option(None, "--negative/--positive", help="Only one side."),
    limit: int = typer.Option(50, "--limit", min=1, max=10_000, help="How many, newest first."),
    as_user: str = AsOption,
    json_out: bool = JsonOption,
) -> None:
    """Recent feedback: the rating, the comment, the correction, the report it filed."""
    hub = open_hub()
    rows = domain.list_feedback(hub, current_actor(hub, as_user), model, negative, limit)
    if json_out:
        emit_json({"feedback": rows}, domain.FeedbackList)
        return
    if not rows:
        err_console.print("no feedback yet")
        return
    table = Table("id", "model", "rating", "prompt", "correction", "report")
    for r in rows:
        rating = r["label"] if r["kind"] == "label" else f"{r['score']:+g}"
        table.add_row(
            str(r["id"]),
            r["model"],
            ("👎 " if r["negative"] else "👍 ") + str(rating),
            Text(_short(r["prompt"] or "(not kept)")),
            Text(_short(r["correction"] or "")),
            str(r["report_id"] or ""),
        )
    console.print(table)


@app.command("stats")
def stats(
    model: str = typer.Option(None, "--model", help="Only NAME (or NAME@REV)."),
    as_user: str = AsOption,
    json_out: bool = JsonOption,
) -> None:
    """Per revision: answers served, feedback, thumbs-down rate with its 95 % interval,
    corrections, and the biggest clusters of negative feedback."""
    hub = open_hub()
    rows = domain.stats(hub, current_actor(hub, as_user), model)
    if json_out:
        emit_json({"revisions": rows}, domain.FeedbackStats)
        return
    if not rows:
        err_console.print("nothing served yet")
        return
    table = Table("revision", "served", "feedback", "thumbs down", "95 % interval", "corrections")
    for r in rows:
        rate = "–" if r["thumbs_down_rate"] is None else f"{r['thumbs_down_rate']:.0%}"
        low, high = r["interval"]
        table.add_row(
            f"{r['model']}@{r['revision']}",
            str(r["responses"]),
            str(r["feedback"]),
            f"{r['thumbs_down']}/{r['thumbs']} ({rate})",
            f"{low:.0%}–{high:.0%}",
            str(r["corrections"]),
        )
    console.print(table)
    for r in rows:
        for c in r["clusters"]:
            console.print(
                Text(
                    f"  {r['model']}@{r['revision']}: {c['size']} report(s) like "
                    f"#{c['id']}: {_short(c['prompt'], 70)}"
                )
            )


@app.command("export")
def export(
    format: str = typer.Option(
        ..., "--format", help="chat (dataset JSONL) or preference (prompt/chosen/rejected)."
    ),
    model: str = typer.Option(None, "--model", help="Only NAME (or NAME@REV)."),
    ids: str = typer.Option("", "--feedback", help="Only these feedback ids, e.g. 4,9."),
    out: Path = typer.Option(None, "--out", help="Write here instead of standard output."),
    as_user: str = AsOption,
    json_out: bool = typer.Option(
        False, "--json", help="Print one JSON document (the lines, or where they went)."
    ),
) -> None:
    """Corrections from negative feedback as JSONL, one per answer, each with its
    consent and licence in `metadata`."""
    hub = open_hub()
    chosen = number_list(ids, int, "--feedback", "feedback ids") or None
    lines = domain.export(hub, current_actor(hub, as_user), format, model, chosen)
    text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    if out is not None:
        out.write_text(text, encoding="utf-8")
    if json_out:
        shown = None if out is not None else lines
        emit_json({"format": format, "count": len(lines), "out": out and str(out), "lines": shown})
    elif out is None:
        typer.echo(text, nl=False)
    else:
        err_console.print(f"wrote {len(lines)} line(s) to {out}")


def _short(text: str, width: int = 40) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
