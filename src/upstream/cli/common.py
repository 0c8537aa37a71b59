"""What every command shares: opening the hub, printing JSON, progress bars."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from upstream import accounts
from upstream.access import Actor
from upstream.db.schema import MAX_ID
from upstream.engines.base import DEFAULT_MAX_NEW_TOKENS, MAX_NEW_TOKENS
from upstream.errors import InvalidInput
from upstream.hub import Hub
from upstream.shapes import Shape

# Piped output is not cut to 80 columns: tables stay whole for logs and grep. Markup is
# off: what users wrote (a prompt "[/x]") is printed as written, never read as styling;
# the few styled lines of our own say `markup=True` and escape what they quote.
console = Console(width=None if sys.stdout.isatty() else 160, markup=False)
# Progress and notes go to stderr, so that `--json` output on stdout stays one document.
err_console = Console(stderr=True, markup=False)

JsonOption = typer.Option(False, "--json", help="Print one JSON document on stdout, nothing else.")


def max_new_tokens_option(help: str = "The most tokens to generate per answer.") -> Any:
    """`--max-new-tokens`, bounded as every request is (1 to MAX_NEW_TOKENS)."""
    return typer.Option(
        DEFAULT_MAX_NEW_TOKENS, "--max-new-tokens", min=1, max=MAX_NEW_TOKENS, help=help
    )


def open_hub(create: bool = False) -> Hub:
    return Hub.open(create=create)


def emit_json(data: Any, shape: type[Shape] | None = None) -> None:
    """Print `data` as JSON; with `shape`, as that typed body (the one the API answers),
    checked against it first."""
    if shape is not None:
        data = shape.model_validate(data).model_dump(mode="json", by_alias=True, exclude_unset=True)
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@contextmanager
def progress_bar(description: str) -> Iterator[Callable[[float, float, str], None]]:
    """A rich progress bar on stderr; yields the (done, total, message) callback jobs use."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[note]}"),
        console=err_console,
        transient=False,
    ) as bar:
        task = bar.add_task(description, total=None, note="")

        def update(done: float, total: float, message: str) -> None:
            bar.update(task, completed=done, total=total or None, note=message)

        yield update


def run_job(
    hub: Hub, kind: str, args: dict[str, Any], description: str, hand_over: bool = False
) -> dict[str, Any]:
    """Run a job with a progress bar; returns the job's result.

    With `hand_over`, an idle worker on this host (`upstream up`, `upstream worker`) of
    this version gets the job, its loaded models ready; otherwise, or if it does not take
    the job within a few seconds, the job runs in this process. Ctrl-C while a worker
    runs it leaves it running there. Only jobs whose arguments mean the same in any
    process on this host (absolute paths, names) may be handed over.
    """
    handed: list[int] = []

    def note(job_id: int, worker: str) -> None:
        handed.append(job_id)
        host, pid = [*worker.split(":"), "?", "?"][:2]
        err_console.print(
            f"job {job_id} runs on the worker already running here (pid {pid} on {host}), "
            "where models stay loaded; UPSTREAM_HAND_OVER_JOBS=false runs it in this process",
            style="dim",
        )

    def taken_back(job_id: int) -> None:
        handed.clear()
        err_console.print(f"no worker took job {job_id}: running it in this process", style="dim")

    with progress_bar(description) as update:
        if not hand_over:
            return hub.jobs.run_foreground(kind, args, update)
        try:
            return hub.jobs.run_anywhere(kind, args, update, note, taken_back)
        except KeyboardInterrupt:
            if handed:
                err_console.print(
                    f"job {handed[0]} goes on in the worker; `upstream jobs show {handed[0]}`"
                )
            raise


def number_list(text: str, kind: type, option: str, what: str = "numbers") -> list[Any]:
    """A comma-separated option ("3,7, 12") as numbers of `kind`, or InvalidInput."""

    try:
        numbers = [kind(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError as e:
        raise InvalidInput(f"{option} {text!r}: give {what} separated by commas") from e
    if kind is int and any(not 0 <= n <= MAX_ID for n in numbers):
        raise InvalidInput(f"{option} {text!r}: each from 0 to {MAX_ID}")
    return numbers


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def human_count(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.1f}B"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return str(n)


AsOption = typer.Option(
    None,
    "--as",
    help="Act as this user account (default: $UPSTREAM_AS, else the hub's owner).",
)


def current_actor(hub: Hub, as_user: str | None = None) -> Actor:
    """Who a command acts as: the account `--as` (or $UPSTREAM_AS) names, else the owner.

    The CLI runs on the hub's own machine, where its user can read the hub's files
    anyway; so it acts as the hub's owner, and `--as` lets scripts and tests act as the
    people they stand for, with their role.
    """

    name = as_user or os.environ.get("UPSTREAM_AS")
    return accounts.actor_named(hub, name) if name else accounts.owner(hub)
