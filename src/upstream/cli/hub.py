"""Hub-wide commands: init, up, worker, fsck, jobs list|show."""

from __future__ import annotations

import logging

import typer
from rich.markup import escape
from rich.table import Table

from upstream import embeddings
from upstream.accounts import exposure_problems
from upstream.cli.common import (
    MAX_ID,
    AsOption,
    JsonOption,
    console,
    current_actor,
    emit_json,
    err_console,
    open_hub,
    progress_bar,
    run_job,
)
from upstream.errors import Conflict
from upstream.jobs import JobList, JobOut, Worker, job_json
from upstream.registry import default_model_import
from upstream.registry import fsck as run_fsck
from upstream.threads import in_fresh_thread


def init(json_out: bool = JsonOption) -> None:
    """Create a hub in $UPSTREAM_HOME (default ./.upstream): database and blob store."""
    hub = open_hub(create=True)
    info = {
        "home": str(hub.settings.home),
        "database_url": hub.settings.database_url,
        "blob_dir": str(hub.settings.blob_dir),
    }
    if json_out:
        emit_json(info)
    else:
        console.print(f"hub ready at {info['home']}")


def up(
    host: str = typer.Option(None, "--host", help="Address to bind (default 127.0.0.1)."),
    port: int = typer.Option(None, "--port", help="Port (default 8321)."),
    no_import: bool = typer.Option(
        False, "--no-import", help="Do not import the bundled model into an empty hub."
    ),
    no_worker: bool = typer.Option(
        False, "--no-worker", help="Serve only; run jobs with separate `upstream worker`s."
    ),
) -> None:
    """Start the hub: the web pages, the REST API under /api, /v1 and a job worker."""
    import uvicorn

    from upstream.server.app import create_app

    hub = open_hub(create=True)
    problems = exposure_problems(hub, host or hub.settings.host)
    if problems:
        raise Conflict(
            f"not serving on {host or hub.settings.host}, which is reachable beyond this "
            "machine: " + "; ".join(problems)
        )
    args = None if no_import else default_model_import(hub)
    if args:
        err_console.print(f"no models yet: importing the bundled {args['name']} (once)")
        # in a thread that ends with it, not in the thread that will serve (upstream.threads)
        in_fresh_thread(run_job, hub, "models.import", args, "importing")
    host = host or hub.settings.host
    port = port or hub.settings.port
    if hub.settings.embed_apart:
        embeddings.embed_apart()  # its own interpreter lock: see upstream.embeddings
    err_console.print(f"Upstream hub at http://{host}:{port}  (home {hub.settings.home})")
    uvicorn.run(create_app(hub, worker=not no_worker), host=host, port=port, log_level="info")


def worker(
    once: bool = typer.Option(False, "--once", help="Run the queued jobs, then exit."),
) -> None:
    """Run jobs from the queue in this process until stopped."""

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    hub = open_hub()
    w = Worker(hub)
    if once:
        while w.run_once() is not None:
            pass
        return
    err_console.print(f"worker {w.name} waiting for jobs (Ctrl-C to stop)")
    try:
        w.run_forever()
    except KeyboardInterrupt:
        w.stopping.set()


def fsck(json_out: bool = JsonOption) -> None:
    """Verify every blob's sha256 and that every revision's files are present."""

    hub = open_hub()
    with progress_bar("verifying blobs") as update:
        report = run_fsck(hub, update)
    if json_out:
        emit_json(report)
    else:
        console.print(f"{report['blobs']} blobs checked")
        for sha in report["corrupt"]:
            console.print(f"[red]corrupt[/] blob {sha}", markup=True)
        for m in report["missing"]:
            console.print(
                f"[red]missing[/] {escape(m['file'])} of revision {m['revision']}", markup=True
            )
        console.print("[green]ok[/]" if report["ok"] else "[red]problems found[/]", markup=True)
    if not report["ok"]:
        raise typer.Exit(1)


jobs_app = typer.Typer(help="Inspect the job queue.", no_args_is_help=True)


@jobs_app.command("list")
def jobs_list(
    state: str = typer.Option(None, "--state", help="queued, running, done or failed."),
    json_out: bool = JsonOption,
) -> None:
    """List recent jobs with their state and progress."""

    hub = open_hub()
    rows = [job_json(j) for j in hub.jobs.list(state)]
    if json_out:
        emit_json({"jobs": rows}, JobList)
        return
    table = Table("id", "kind", "state", "attempts", "progress", "message / error")
    for r in rows:
        pct = f"{100 * r['progress'] / r['total']:.0f}%" if r["total"] else "-"
        note = r["error"].splitlines()[0] if r["error"] else r["message"]
        table.add_row(str(r["id"]), r["kind"], r["state"], str(r["attempts"]), pct, note)
    console.print(table)


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: int = typer.Argument(..., min=1, max=MAX_ID, help="The job's id (from `jobs list`)."),
    as_user: str = AsOption,
    json_out: bool = JsonOption,
) -> None:
    """Stop a job: a queued one at once, a running one at its next progress report."""

    hub = open_hub()
    job = job_json(hub.jobs.cancel(job_id, current_actor(hub, as_user)))
    if json_out:
        emit_json(job, JobOut)
    elif job["state"] == "failed":
        console.print(f"job {job_id} cancelled")
    else:
        console.print(f"job {job_id} stops at its next progress report")


@jobs_app.command("show")
def jobs_show(
    job_id: int = typer.Argument(
        ..., min=1, max=MAX_ID, help="The job's id (from `jobs list` or a command)."
    ),
    follow: bool = typer.Option(
        False, "--follow", help="Show its progress until it ends; exit 1 if it failed."
    ),
    json_out: bool = JsonOption,
) -> None:
    """Show one job: its state, progress, attempts, result or error."""
    import time

    hub = open_hub()
    job = job_json(hub.jobs.get(job_id))
    if follow and job["state"] in ("queued", "running"):
        with progress_bar(f"job {job_id} {job['kind']}") as update:
            while job["state"] in ("queued", "running"):
                update(job["progress"], job["total"], job["message"])
                time.sleep(0.5)
                job = job_json(hub.jobs.get(job_id))
    if json_out:
        emit_json(job, JobOut)
    else:
        console.print(f"job {job['id']} {job['kind']}: {job['state']}")
        console.print(f"  attempts {job['attempts']}, created {job['created_at']}")
        if job["total"]:
            console.print(f"  progress {job['progress']:g} of {job['total']:g} {job['message']}")
        if job["error"]:
            console.print(f"  [red]error[/] {escape(job['error'])}", markup=True)
        if job["result"] is not None:
            console.print(f"  result {job['result']}")
    if follow and job["state"] == "failed":
        raise typer.Exit(1)
