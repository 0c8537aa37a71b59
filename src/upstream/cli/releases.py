"""`upstream release` and `upstream credits`: merge approved fixes, and who made them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from upstream import releases as domain
from upstream.cli.common import (
    AsOption,
    JsonOption,
    console,
    current_user,
    emit_json,
    err_console,
    number_list,
    open_hub,
    progress_bar,
)


def release(
    model: str = typer.Argument(..., help="The model's NAME."),
    from_: str = typer.Option(..., "--from", help="Approved contribution ids, e.g. 3,5."),
    method: str = typer.Option(
        "linear", "--method", help="linear, ties, dare_ties, or retrain (one adapter on all data)."
    ),
    weights: str = typer.Option("", "--weights", help="One weight per contribution, e.g. 1,0.5."),
    density: float = typer.Option(
        None, "--density", help="ties/dare_ties: share of each delta kept."
    ),
    seed: int = typer.Option(None, "--seed", help="dare_ties: the random seed (recorded)."),
    no_wait: bool = typer.Option(False, "--no-wait", help="Queue it for the hub's worker."),
    as_user: str = AsOption,
    json_out: bool = JsonOption,
) -> None:
    """Merge approved contributions into a new revision, check it, tag it, credit people."""
    hub = open_hub()
    data = domain.ReleaseIn(model, number_list(from_, int, "--from"), method, None, density, seed)
    if weights:
        data.weights = number_list(weights, float, "--weights")
    planned = domain.plan_release(hub, data, current_user(as_user))
    job_id = domain.queue_release(hub, planned["id"], max_attempts=3 if no_wait else 1)
    if no_wait:
        result: dict[str, Any] = {"release": planned["id"], "job": job_id, "state": "queued"}
        emit_json(result) if json_out else console.print(f"release queued as job {job_id}")
        return
    with progress_bar("releasing") as update:
        result = hub.jobs.run_now(job_id, update)
    if json_out:
        emit_json(result)
        return
    state = result["state"]
    head = f"[green]released {result['tag']}[/]" if state == "released" else f"[yellow]{state}[/]"
    console.print(
        f"{head}: {result['model']}@{(result['revision'] or '')[:12]} ({result['method']})"
    )
    for reason in result["reasons"]:
        console.print(f"  {reason}", markup=False, highlight=False)


def credits(
    model: str = typer.Option(None, "--model", help="Only this model's releases."),
    json_out: bool = JsonOption,
) -> None:
    """Who made the releases better: reporters, confirmers, contributors, reviewers."""
    from upstream.credits import credits_table

    hub = open_hub()
    with hub.session() as s:
        rows = credits_table(s, model)
    if json_out:
        emit_json({"credits": rows})
        return
    if not rows:
        err_console.print("no credits yet: they are written when a release is made")
        return
    table = Table("user", "points", "releases", "for")
    for r in rows:
        roles = ", ".join(f"{n} {role}" for role, n in sorted(r["roles"].items()))
        table.add_row(escape(r["user"]), f"{r['points']:g}", str(r["releases"]), roles)
    console.print(table)


def demo(
    home: Path = typer.Option(None, "--home", help="Build the demo hub here (kept)."),
    keep: bool = typer.Option(False, "--keep", help="Keep the temporary hub afterwards."),
    json_out: bool = JsonOption,
) -> None:
    """The whole loop on the bundled model in a fresh hub, narrated (a few minutes)."""
    from upstream.demo import run_demo

    out = console if not json_out else err_console
    result = run_demo(out, progress_bar, home, keep)
    if json_out:
        emit_json(result)
