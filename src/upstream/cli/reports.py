"""`upstream reports`: file failure reports, list and show them, triage them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from upstream import reports as domain
from upstream.cli.common import (
    MAX_ID,
    AsOption,
    JsonOption,
    console,
    current_actor,
    emit_json,
    err_console,
    max_new_tokens_option,
    open_hub,
    progress_bar,
)
from upstream.errors import InvalidInput
from upstream.hub import Hub
from upstream.reproduction import expect as do_expect
from upstream.reproduction import queue_reproduction
from upstream.reproduction import rescore as do_rescore
from upstream.triage import TriageOut
from upstream.triage import close as do_close
from upstream.triage import confirm as do_confirm

app = typer.Typer(help="File failure reports, find them, and triage them.", no_args_is_help=True)


@app.command("file")
def file_(
    model: str = typer.Option(
        None,
        "--model",
        help="NAME or NAME@REV the failure is in "
        '(for --jsonl: the default for lines without "model").',
    ),
    prompt: str = typer.Option(None, "--prompt", help="The prompt that fails."),
    jsonl: Path = typer.Option(None, "--jsonl", help="A JSONL file of reports, one per line."),
    expect: str = typer.Option(
        None,
        "--expect",
        help='A check, e.g. \'{"type": "exact", "value": "Paris"}\' '
        "(with --jsonl: for lines without one).",
    ),
    tag: list[str] = typer.Option(
        [], "--tag", help="A tag (repeatable; with --jsonl: added to every line)."
    ),
    severity: str = typer.Option("medium", "--severity", help="low, medium, high, critical."),
    description: str = typer.Option("", "--description", help="What is wrong, in words."),
    observed: str = typer.Option(None, "--observed", help="The output you saw (optional)."),
    variant: list[str] = typer.Option(
        [], "--variant", help="Another prompt showing the same failure (repeatable)."
    ),
    max_new_tokens: int = max_new_tokens_option(),
    license_: str = typer.Option("CC-BY-4.0", "--license", help="Licence of the report's content."),
    no_consent: bool = typer.Option(
        False, "--no-consent", help="Do not share this report upstream (kept in this hub only)."
    ),
    skip_invalid: bool = typer.Option(
        False, "--skip-invalid", help="With --jsonl: file the good lines and list the bad ones."
    ),
    no_reproduce: bool = typer.Option(
        False, "--no-reproduce", help="Queue reproduction for a worker instead of running it now."
    ),
    as_user: str = AsOption,
    json_out: bool = JsonOption,
) -> None:
    """File a failure report (or a JSONL file of them); then reproduce it."""
    if (prompt is None) == (jsonl is None):
        raise InvalidInput("give exactly one of --prompt or --jsonl")
    hub = open_hub()
    reporter = current_actor(hub, as_user)
    if jsonl is not None:
        if not jsonl.is_file():
            raise InvalidInput(f"--jsonl {jsonl}: no such file")
        defaults: dict[str, Any] = {"tags": tag}
        if severity != "medium":
            defaults["severity"] = severity
        if expect is not None:
            defaults["expected"] = _check_option(expect)
        good, bad = domain.parse_jsonl(jsonl.read_bytes(), model, defaults)
        submission = domain.submit(hub, good, reporter, "cli", skip_invalid, bad)
    else:
        if model is None:
            raise InvalidInput("--model is needed with --prompt")
        data: dict[str, Any] = {
            "model": model,
            "prompt": prompt,
            "tags": tag,
            "severity": severity,
            "description": description,
            "observed": observed,
            "variants": variant,
            "max_new_tokens": max_new_tokens,
            "license": license_,
            "consent": not no_consent,
        }
        if expect is not None:
            data["expected"] = _check_option(expect)
        submission = domain.submit_one(hub, domain.parse_report(data), reporter, "cli")
    result = _reproduce(hub, submission.job, queue=no_reproduce)
    if json_out:
        emit_json({**submission.as_dict(), **result})
        return
    for f in submission.filed:
        what = "filed" if f.created else "already reported; your filing was counted on"
        near = (
            f"  (likely duplicate of #{f.similar_to}, distance {f.distance:.2f})"
            if f.created and f.similar_to
            else ""
        )
        console.print(f"{what} report #{f.id}{near}")
    for n, error in submission.invalid:
        err_console.print(
            f"[yellow]skipped[/] line {n}: {escape(error)}", markup=True, highlight=False
        )
    _print_reproduction(result)


def _check_option(expect: str, option: str = "--expect") -> Any:
    try:
        return json.loads(expect)
    except json.JSONDecodeError as e:
        raise InvalidInput(f"{option}: not JSON: {e.msg}") from e


def _reproduce(hub: Hub, job: int | None, queue: bool) -> dict[str, Any]:
    """Run the queued reproduction `job` here and now, or leave it queued."""
    if job is None:
        return {"reproduction": None}
    if queue:
        return {"reproduction": {"job": job, "state": "queued"}}
    with progress_bar("reproducing") as update:
        return {"reproduction": hub.jobs.run_now(job, update)}


def _print_reproduction(result: dict[str, Any]) -> None:
    rep = result.get("reproduction")
    if not rep:
        return
    if "job" in rep:
        console.print(f"reproduction queued as job {rep['job']} (run `upstream worker`)")
        return
    counts: dict[str, int] = {}
    for r in rep["reports"].values():
        counts[r["result"]] = counts.get(r["result"], 0) + 1
    console.print("reproduction: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))


@app.command("list")
def list_(
    model: str = typer.Option(None, "--model", help="Only this model."),
    status: str = typer.Option(None, "--status", help=", ".join(domain.STATUSES)),
    tag: str = typer.Option(None, "--tag", help="Only reports with this tag."),
    severity: str = typer.Option(None, "--severity", help=", ".join(domain.SEVERITIES)),
    text: str = typer.Option(None, "--text", help="Text in the prompt or description."),
    clusters: bool = typer.Option(False, "--clusters", help="Group likely duplicates."),
    limit: int = typer.Option(100, "--limit", min=1),
    json_out: bool = JsonOption,
) -> None:
    """List reports, newest first, filtered; or their duplicate clusters."""

    hub = open_hub()
    query = domain.ReportQuery(
        model, status, tag, severity, text, limit=limit if not clusters else 1_000_000
    )
    with hub.session() as s:
        found = domain.list_reports(s, query)
        if clusters:
            groups = domain.clusters(found)[:limit]
        rows = [domain.report_summary(r) for r in found[:limit]]
    if clusters:
        if json_out:
            emit_json({"clusters": groups}, domain.ReportList)
            return
        table = Table("cluster", "reports", "reporters", "statuses", "first prompt")
        for c in groups:
            table.add_row(
                f"#{c['id']}",
                str(c["size"]),
                str(c["reporters"]),
                ", ".join(c["statuses"]),
                _short(c["prompt"]),
            )
        console.print(table)
        return
    if json_out:
        emit_json({"reports": rows}, domain.ReportList)
        return
    if not rows:
        err_console.print("no reports match")
        return
    table = Table("id", "model", "status", "sev", "repro", "tags", "prompt")
    for r in rows:
        rate = "-" if r["reproduction_rate"] is None else f"{r['reproduction_rate']:.0%}"
        table.add_row(
            str(r["id"]),
            r["model"],
            r["status"],
            r["severity"],
            rate,
            ",".join(r["tags"]),
            _short(r["prompt"]),
        )
    console.print(table)


def _short(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


@app.command("show")
def show(
    report_id: int = typer.Argument(..., min=1, max=MAX_ID, help="Report id."),
    json_out: bool = JsonOption,
) -> None:
    """Show a whole report: input, check, reproduction outputs and history."""
    hub = open_hub()
    with hub.session() as s:
        d = domain.report_detail(s, domain.get_report(s, report_id))
    if json_out:
        emit_json(d, domain.ReportDetail)
        return
    console.print(
        f"[bold]report #{d['id']}[/]  {d['status']}  severity {d['severity']}  "
        f"model {d['model']}@{(d['revision'] or '')[:12]}",
        markup=True,
    )
    console.print(
        f"reported by {d['reporter']} via {d['source']} "
        f"({d['filings']} filing(s), {d['reporters']} reporter(s)), "
        f"licence {d['license']}"
    )
    if d["tags"]:
        console.print(f"tags: {', '.join(d['tags'])}")
    if d["description"]:
        console.print(f"description: {d['description']}", markup=False)
    console.print(
        f"expected: {json.dumps(d['expected']) if d['expected'] else '(no check)'}", markup=False
    )
    if d["similar_to"]:
        console.print(
            f"likely duplicate of #{d['similar_to']} (distance {d['similar_distance']:.2f})"
        )
    rate = d["reproduction_rate"]
    console.print("reproduction rate: " + ("-" if rate is None else f"{rate:.0%}"))
    table = Table("#", "prompt", "output", "pass", "why")
    for v in d["variants"]:
        verdict = {True: "pass", False: "FAIL", None: "-"}[v["passed"]]
        table.add_row(
            str(v["position"]),
            _short(v["prompt"], 50),
            _short(v["output"] or "(not run yet)", 60),
            verdict,
            v["explanation"],
        )
    console.print(table)
    for e in d["events"]:
        move = f"{e['from']} -> {e['to']}" if e["to"] else e["kind"]
        console.print(f"  {e['at'][:19]}  {e['actor']}: {move}  {e['note']}", markup=False)


@app.command("confirm")
def confirm(
    report_ids: list[int] = typer.Argument(..., min=1, max=MAX_ID, help="Report ids."),
    as_user: str = AsOption,
    json_out: bool = JsonOption,
) -> None:
    """Confirm reports (maintainers directly; others count toward three)."""

    hub = open_hub()
    actor = current_actor(hub, as_user)
    results = [do_confirm(hub, rid, actor) for rid in report_ids]
    if json_out:
        emit_json({"reports": results})
        return
    for r in results:
        extra = (
            ""
            if r["status"] == "confirmed"
            else f" ({len(r['confirmations'])} of {r['needed']} confirmations)"
        )
        console.print(f"report #{r['id']}: {r['message']}, now {r['status']}{extra}")


@app.command("close")
def close(
    report_id: int = typer.Argument(..., min=1, max=MAX_ID, help="Report id."),
    reason: str = typer.Option("", "--reason", help="Why it is closed."),
    duplicate_of: int = typer.Option(
        None, "--duplicate-of", min=1, max=MAX_ID, help="Close as a duplicate of this report."
    ),
    as_user: str = AsOption,
    json_out: bool = JsonOption,
) -> None:
    """Close a report as wontfix, or as a duplicate of another."""

    hub = open_hub()
    r = do_close(hub, report_id, current_actor(hub, as_user), reason, duplicate_of)
    if json_out:
        emit_json(r, TriageOut)
    else:
        console.print(f"report #{r['id']}: {r['message']}")


@app.command("reproduce")
def reproduce(
    report_ids: list[int] = typer.Argument(..., min=1, max=MAX_ID, help="Report ids."),
    as_user: str = AsOption,
    json_out: bool = JsonOption,
) -> None:
    """Run reproduction again (e.g. after the check or the model changed)."""

    hub = open_hub()
    job = queue_reproduction(hub, current_actor(hub, as_user), report_ids)
    result = _reproduce(hub, job, queue=False)
    if json_out:
        emit_json(result)
    else:
        _print_reproduction(result)


@app.command("expect")
def expect(
    report_id: int = typer.Argument(..., min=1, max=MAX_ID, help="The report."),
    check: str = typer.Option(
        ..., "--check", help='The check, e.g. \'{"type": "exact", "value": "Paris"}\'.'
    ),
    no_reproduce: bool = typer.Option(
        False, "--no-reproduce", help="Queue its reproduction (if needed) for a worker."
    ),
    as_user: str = AsOption,
    json_out: bool = JsonOption,
) -> None:
    """Give a report its check (one filed without, such as a thumbs-down): its outputs are
    judged at once, or it is reproduced now."""
    hub = open_hub()
    spec = _check_option(check, "--check")
    result = do_expect(hub, current_actor(hub, as_user), report_id, spec)
    if result["judged"] is None:
        result.update(_reproduce(hub, result["job"], no_reproduce))
    if json_out:
        emit_json(result)
        return
    judged = result["judged"]
    if judged is not None:
        console.print(
            Text(
                f"report {report_id}: {judged['result']} "
                f"(failing {judged['failing']} of {judged['checked']}); now {result['status']}"
            )
        )
    else:
        console.print(Text(f"report {report_id}: check set"))
        _print_reproduction(result)


@app.command("rescore")
def rescore(
    report_ids: list[int] = typer.Argument(..., min=1, max=MAX_ID, help="Report ids."),
    expect: str = typer.Option(None, "--expect", help="Replace the report's check first."),
    as_user: str = AsOption,
    json_out: bool = JsonOption,
) -> None:
    """Judge stored outputs again (optionally with a new check); generates nothing."""

    check = _check_option(expect) if expect is not None else None
    hub = open_hub()
    result = {"reproduction": do_rescore(hub, report_ids, current_actor(hub, as_user), check)}
    if json_out:
        emit_json(result)
    else:
        _print_reproduction(result)
