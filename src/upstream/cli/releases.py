"""`upstream release` and `upstream credits`: merge approved fixes, and who made them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from upstream import releases as domain
from upstream.cli.common import (
    MAX_ID,
    AsOption,
    JsonOption,
    console,
    current_actor,
    emit_json,
    err_console,
    number_list,
    open_hub,
    progress_bar,
)
from upstream.credits import CreditTable, credits_table
from upstream.errors import InvalidInput


def release(
    model: str = typer.Argument(..., help="The model's NAME."),
    from_: str = typer.Option("", "--from", help="Approved contribution ids, e.g. 3,5."),
    ship: int = typer.Option(
        None,
        "--ship",
        min=1,
        max=MAX_ID,
        help="Ship a passing candidate release by its id (from a --dry-run).",
    ),
    method: str = typer.Option(
        "linear", "--method", help="linear, ties, dare_ties, or retrain (one adapter on all data)."
    ),
    weights: str = typer.Option("", "--weights", help="One weight per contribution, e.g. 1,0.5."),
    density: float = typer.Option(
        None, "--density", help="ties/dare_ties: share of each delta kept."
    ),
    seed: int = typer.Option(None, "--seed", help="dare_ties: the random seed (recorded)."),
    search: bool = typer.Option(
        False,
        "--search",
        help="Build every candidate (linear at weights 1 and 0.75; with several "
        "contributions also ties at densities 0.8 and 0.5, dare_ties at 0.5, and retrain "
        "when all are datasets), check each, and ship the passing one with the best "
        "retention.",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="With --search: only build, check and show the candidates."
    ),
    methods: str = typer.Option(
        "", "--methods", help="With --search: only these methods, e.g. linear,ties."
    ),
    no_wait: bool = typer.Option(False, "--no-wait", help="Queue it for the hub's worker."),
    as_user: str = AsOption,
    json_out: bool = JsonOption,
) -> None:
    """Merge approved contributions into a new revision, check it, and (if it passes) tag it
    and credit people; --search tries several merges and ships the best."""
    hub = open_hub()
    if ship is not None:
        if from_ or search or dry_run or methods or no_wait:
            raise InvalidInput(
                "--ship ships a candidate that was built already: leave out --from, "
                "--search, --dry-run, --methods and --no-wait"
            )
        shipped = domain.ship_release(hub, ship, current_actor(hub, as_user), model)
        _print_release(shipped, json_out)
        return
    if not from_:
        raise InvalidInput("--from: name the approved contributions to release, e.g. --from 3,5")
    if (dry_run or methods) and not search:
        raise InvalidInput("--dry-run and --methods apply to --search only")
    if search:
        if method != "linear" or weights or density is not None or seed is not None:
            raise InvalidInput(
                "--search tries its own methods and parameters: leave out --method, "
                "--weights, --density and --seed (or use --methods to narrow it)"
            )
        _search(hub, model, from_, methods, dry_run, as_user, json_out)
        return
    data = domain.ReleaseIn(model, number_list(from_, int, "--from"), method, None, density, seed)
    if weights:
        data.weights = number_list(weights, float, "--weights")
    planned = domain.cut_release(hub, data, current_actor(hub, as_user), 3 if no_wait else 1)
    job_id = planned["job"]
    if no_wait:
        result: dict[str, Any] = {"release": planned["id"], "job": job_id, "state": "queued"}
        emit_json(result) if json_out else console.print(f"release queued as job {job_id}")
        return
    with progress_bar("releasing") as update:
        result = hub.jobs.run_now(job_id, update)
    _print_release(result, json_out)


def _print_release(result: dict[str, Any], json_out: bool) -> None:
    if json_out:
        emit_json(result)
        return
    state = result["state"]
    head = f"[green]released {result['tag']}[/]" if state == "released" else f"[yellow]{state}[/]"
    console.print(
        f"{head}: {result['model']}@{(result['revision'] or '')[:12]} ({result['method']})",
        markup=True,
    )
    for reason in result["reasons"]:
        console.print(f"  {reason}", markup=False, highlight=False)


def _search(
    hub: Any, model: str, from_: str, methods: str, dry_run: bool, as_user: str, json_out: bool
) -> None:
    wanted = [m.strip() for m in methods.split(",") if m.strip()] or None
    with progress_bar("searching") as update:
        result = domain.search_release(
            hub,
            model,
            number_list(from_, int, "--from"),
            current_actor(hub, as_user),
            dry_run,
            wanted,
            update,
        )
    if json_out:
        emit_json(result)
        return
    table = candidates_table(result["candidates"], result["chosen"])
    console.print(table)
    chosen = next(
        (c for c in result["candidates"] if c["id"] is not None and c["id"] == result["chosen"]),
        None,
    )
    if chosen is None:
        console.print("[yellow]no candidate passed its checks; nothing released[/]", markup=True)
        for c in result["candidates"]:
            failed = [r for r in c["reasons"] if r.startswith("✗")]
            console.print(f"  {c['candidate']}: {'; '.join(failed)}", markup=False)
        return
    if result["ship_error"]:
        console.print(f"[yellow]not shipped[/]: {escape(result['ship_error'])}", markup=True)
        return
    if result["release"] is None:
        console.print(
            f"dry run: release {chosen['id']} ({chosen['candidate']}) would ship; "
            f"ship it with `upstream release {model} --ship {chosen['id']}`"
        )
        return
    r = result["release"]
    console.print(
        f"[green]released {r['tag']}[/]: {r['model']}@{r['revision'][:12]} "
        f"({escape(chosen['candidate'])})",
        markup=True,
    )
    for reason in r["reasons"]:
        console.print(f"  {reason}", markup=False, highlight=False)


def candidates_table(candidates: list[dict[str, Any]], chosen: int | None) -> Table:
    """The release search's candidates, one row each, the chosen one marked."""
    table = Table(
        "release",
        "candidate",
        "checks",
        "fixed",
        "broken",
        "knowledge lost",
        "guard broken",
        "retention (per contribution)",
        title="release search",
    )
    for c in candidates:
        f = c["figures"]
        kept = ", ".join(
            f"#{k} {'–' if v is None else f'{v:.0%}'}" for k, v in f["retention"].items()
        )
        mark = " ←" if c["id"] is not None and c["id"] == chosen else ""
        table.add_row(
            f"{c['id'] or '–'}{mark}",
            c["candidate"],
            Text("passed", style="green") if c["passed"] else Text("failed", style="red"),
            str(f["fixed"]),
            str(f["broken"]),
            str(f["knowledge_lost"]),
            str(f["guard_broken"]),
            kept,
        )
    return table


def credits(
    model: str = typer.Option(None, "--model", help="Only this model's releases."),
    json_out: bool = JsonOption,
) -> None:
    """Who made the releases better: reporters, confirmers, contributors, reviewers."""

    hub = open_hub()
    with hub.session() as s:
        rows = credits_table(s, model)
    if json_out:
        emit_json({"credits": rows}, CreditTable)
        return
    if not rows:
        err_console.print("no credits yet: they are written when a release is made")
        return
    table = Table("user", "points", "releases", "for")
    for r in rows:
        roles = ", ".join(f"{n} {role}" for role, n in sorted(r["roles"].items()))
        table.add_row(r["user"], f"{r['points']:g}", str(r["releases"]), roles)
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
