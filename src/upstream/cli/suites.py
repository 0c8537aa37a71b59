"""`upstream suites`, `eval`, `compare`, `leaderboard`: community benchmarks and measuring."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from upstream import suites as domain
from upstream.cli.common import (
    AsOption,
    JsonOption,
    console,
    current_actor,
    emit_json,
    err_console,
    max_new_tokens_option,
    open_hub,
    progress_bar,
    run_job,
)
from upstream.comparisons import Leaderboard, detectable_note
from upstream.comparisons import compare as run_compare
from upstream.comparisons import leaderboard as board
from upstream.contributions import resolve_adapters
from upstream.evals import EVAL_JOB, eval_job
from upstream.stats import net_change

app = typer.Typer(
    help="Community benchmarks: build, import, show and export suites.", no_args_is_help=True
)


@app.command("list")
def list_(json_out: bool = JsonOption) -> None:
    """List suites with their newest version and split sizes."""
    hub = open_hub()
    with hub.session() as s:
        rows = [domain.suite_summary(s, st) for st in domain.list_suites(s)]
    if json_out:
        emit_json({"suites": rows}, domain.SuiteList)
        return
    if not rows:
        err_console.print("no suites yet; build one with `upstream suites build NAME --tag T`")
        return
    table = Table("suite", "model", "version", "cases", "public", "held-out")
    for r in rows:
        table.add_row(
            r["name"],
            r["model"] or "-",
            f"v{r['version']}",
            str(r["cases"]),
            str(r["public"]),
            str(r["heldout"]),
        )
    console.print(table)


@app.command("show")
def show(
    name: str = typer.Argument(..., help="Suite name."),
    version: int = typer.Option(None, "--version", help="A version number (default newest)."),
    as_user: str = AsOption,
    json_out: bool = JsonOption,
) -> None:
    """Show a suite's versions and cases (held-out cases only to maintainers)."""
    hub = open_hub()
    with hub.session() as s:
        view = domain.suite_view(s, name, version, current_actor(hub, as_user))
    if json_out:
        emit_json(view, domain.SuiteView)
        return
    cases = view["case_list"]
    console.print(
        f"[bold]{escape(name)}[/] v{view['shown_version']}: {len(cases)} cases "
        f"({view['public']} public, {view['heldout']} held-out)",
        markup=True,
    )
    table = Table("case", "split", "tags", "prompt", "check")
    for c in cases:
        if c.get("hidden"):
            table.add_row(c["id"][:12], c["split"], ",".join(c["tags"]), "(held out)", "")
        else:
            table.add_row(
                c["id"][:12],
                c["split"],
                ",".join(c["tags"]),
                c["prompt"][:60],
                c["expected"]["type"],
            )
    console.print(table)


@app.command("build")
def build(
    name: str = typer.Argument(..., help="Suite name (created if new)."),
    tag: str = typer.Option(..., "--tag", help="Collect confirmed reports with this tag."),
    model: str = typer.Option(None, "--model", help="Only reports of this model."),
    heldout: int = typer.Option(None, "--heldout", help="Percent held out (new suite; 30)."),
    as_user: str = AsOption,
    json_out: bool = JsonOption,
) -> None:
    """Build (or extend) a suite from the confirmed reports with a tag."""
    hub = open_hub()
    result = domain.build_from_reports(hub, current_actor(hub, as_user), name, tag, model, heldout)
    _print_added(result, json_out)


@app.command("import")
def import_(
    name: str = typer.Argument(..., help="Suite name (created if new)."),
    jsonl: Path = typer.Option(
        ..., "--jsonl", help="A JSONL file of cases, or a Hugging Face datasets directory."
    ),
    model: str = typer.Option(None, "--model", help="The model this suite is for."),
    heldout: int = typer.Option(None, "--heldout", help="Percent held out (new suite; 30)."),
    as_user: str = AsOption,
    json_out: bool = JsonOption,
) -> None:
    """Import cases: {"prompt" or "messages", "expected": check, "tags"} per line."""
    hub = open_hub()
    cases = domain.read_cases(jsonl, hub.settings.max_prompt_chars)
    actor = current_actor(hub, as_user)
    note = f"imported {jsonl.name}"
    result = domain.import_cases(hub, actor, name, cases, model, heldout, note)
    _print_added(result, json_out)


def _print_added(result: dict[str, Any], json_out: bool) -> None:
    if json_out:
        emit_json(result, domain.AddedOut)
    elif result["added"]:
        console.print(
            f"suite {result['suite']} v{result['version']}: {result['added']} new "
            f"case(s), {result['cases']} in all"
        )
    else:
        console.print(f"suite {result['suite']}: nothing new; still v{result['version']}")


@app.command("export")
def export(
    name: str = typer.Argument(..., help="Suite name."),
    fmt: str = typer.Option(..., "--format", help="jsonl, hf or lm-eval."),
    out: Path = typer.Option(..., "--out", help="A new (or empty) directory."),
    version: int = typer.Option(None, "--version", help="Suite version (default newest)."),
    include_heldout: bool = typer.Option(
        False, "--include-heldout", help="Maintainers only: export the held-out cases too."
    ),
    max_new_tokens: int = max_new_tokens_option("lm-eval: the generation length of the task."),
    as_user: str = AsOption,
    json_out: bool = JsonOption,
) -> None:
    """Export a suite for researchers: JSONL, a Hugging Face dataset, or an lm-eval task."""
    from upstream.exports import export_suite

    hub = open_hub()
    actor = current_actor(hub, as_user)
    result = export_suite(hub, actor, name, fmt, out, version, include_heldout, max_new_tokens)
    if json_out:
        emit_json(result)
    else:
        console.print(
            f"exported {result['cases']} case(s) of {name} v{result['version']} as "
            f"{fmt} to {result['out']}"
        )


def eval_(
    ref: str = typer.Argument(..., help="NAME or NAME@REV."),
    suite: str = typer.Option(..., "--suite", help="Suite name."),
    adapter: list[str] = typer.Option(
        [], "--adapter", help="A LoRA adapter directory, or a contribution's as pr:N."
    ),
    split: str = typer.Option("all", "--split", help="public, heldout or all."),
    version: int = typer.Option(None, "--version", help="Suite version (default newest)."),
    max_new_tokens: int = max_new_tokens_option(),
    full_outputs: bool = typer.Option(
        False,
        "--full-outputs",
        help="Generate every answer to the end. By default an answer stops once its "
        "check's verdict is certain (same verdicts, fewer tokens).",
    ),
    as_user: str = AsOption,
    json_out: bool = JsonOption,
) -> None:
    """Evaluate a revision (with adapters) on a suite; prints pass rates per split and tag."""

    hub = open_hub()
    adapters = resolve_adapters(hub, adapter)
    actor = current_actor(hub, as_user)
    args = eval_job(hub, actor, ref, suite, version, split, adapters, max_new_tokens, full_outputs)
    result = run_job(hub, EVAL_JOB, args, "evaluating", hand_over=True)
    if json_out:
        emit_json(result)
        return
    m = result["metrics"]
    console.print(
        f"{result['model']}@{result['revision'][:12]} on {suite} v{result['version']}"
        f" ({result['split']}): {result['generated']} generated, the rest cached"
    )
    outs = m.get("outputs")
    if outs and outs["stopped_at_verdict"]:
        console.print(
            f"{outs['stopped_at_verdict']} of {outs['n']} answer(s) stopped once their "
            f"verdict was certain ({outs['tokens']} tokens in all); --full-outputs for whole "
            "answers"
        )
    table = Table("group", "cases", "pass rate", "95% interval", "errors")
    rows = (
        [("all", m["all"])]
        + [(f"split {k}", v) for k, v in m["splits"].items()]
        + [(f"tag {k}", v) for k, v in m["tags"].items()]
    )
    for label, r in rows:
        table.add_row(
            label,
            str(r["n"]),
            f"{r['rate']:.1%}",
            f"{r['low']:.1%} – {r['high']:.1%}",
            str(r["errors"]),
        )
    console.print(table)


def _harm_cell(harm: dict[str, Any], n: int) -> str:
    """The figure the CI judges a split by: its 95 % bound, or (a suite too small to
    resolve the margin) its observed net change; lost knowledge counted as broken."""
    if harm.get("by_bound", True):
        return f"≥ {harm['low']:+.1%} (margin −{harm['margin']:.0%})"

    observed = net_change(harm["fixed"], harm["broken"], n)
    return f"{observed:+.1%} observed (margin −{harm['margin']:.0%})"


def compare(
    base: str = typer.Argument(..., help="The base: NAME@REV."),
    candidate: str = typer.Argument(..., help="The candidate: NAME@REV."),
    suite: str = typer.Option(..., "--suite", help="Suite name."),
    adapter: list[str] = typer.Option(
        [], "--adapter", help="Adapter(s) for the candidate: directories or pr:N."
    ),
    version: int = typer.Option(None, "--version", help="Suite version (default newest)."),
    max_new_tokens: int = max_new_tokens_option(),
    as_user: str = AsOption,
    json_out: bool = JsonOption,
) -> None:
    """Compare a candidate with a base: fixed, broken, knowledge lost, paired difference."""

    hub = open_hub()
    with progress_bar("evaluating") as update:
        result = run_compare(
            hub,
            base,
            candidate,
            suite,
            version,
            (),
            resolve_adapters(hub, adapter),
            max_new_tokens,
            current_actor(hub, as_user),
            update,
        )
    if json_out:
        emit_json(result)
        return
    b, c = result["base"], result["candidate"]
    console.print(
        f"{suite} v{result['version']}: base {b['model']}@{b['revision'][:12]} vs "
        f"candidate {c['model']}@{c['revision'][:12]}" + (" + adapter(s)" if c["adapters"] else "")
    )
    table = Table(
        "split", "cases", "base", "candidate", "difference (95% CI)", "fixed", "broken", "McNemar p"
    )
    for name, d in result["splits"].items():
        p = d["paired"]
        table.add_row(
            name,
            str(d["n"]),
            f"{d['base_rate']:.1%}",
            f"{d['cand_rate']:.1%}",
            f"{p['diff']:+.1%} ({p['low']:+.1%} – {p['high']:+.1%})",
            str(d["fixed_count"]),
            str(d["broken_count"]),
            f"{d['p_value']:.3g}",
        )
    console.print(table)
    knowledge = Table(
        "split", "with an answer", "base knew", "kept", "lost", "learned", "neither", "harm"
    )
    for name, d in result["splits"].items():
        k, harm = d["knowledge"], d["harm"]
        knowledge.add_row(
            name,
            str(k["n"]),
            str(k["knew"]),
            str(k["kept"]),
            str(k["lost_count"]),
            str(k["learned"]),
            str(k["neither"]),
            _harm_cell(harm, d["n"]),
        )
    console.print(knowledge)
    all_ = result["splits"]["all"]
    for key in ("fixed", "broken"):
        if all_[key]:
            console.print(f"{key}: " + ", ".join(i[:12] for i in all_[key]))
    if all_["knowledge"]["lost"]:
        console.print("knowledge lost: " + ", ".join(i[:12] for i in all_["knowledge"]["lost"]))
    console.print(detectable_note(all_))


def leaderboard(
    suite: str = typer.Option(None, "--suite", help="Only this suite."),
    json_out: bool = JsonOption,
) -> None:
    """Revisions × suites: pass rates with 95 % intervals from the newest runs."""

    rows = board(open_hub(), suite)
    if json_out:
        emit_json({"leaderboard": rows}, Leaderboard)
        return
    if not rows:
        err_console.print("no evaluations yet; run `upstream eval NAME --suite S`")
        return
    table = Table(
        "suite", "model@revision", "adapters", "cases", "pass rate (95% CI)", "public", "held-out"
    )
    for r in rows:

        def fmt(m: dict[str, Any] | None) -> str:
            return "-" if not m else f"{m['rate']:.1%} ({m['low']:.0%}–{m['high']:.0%})"

        table.add_row(
            f"{r['suite']} v{r['version']}",
            f"{r['model']}@{r['revision'][:12]}",
            ",".join(r["adapters"]) or "-",
            str(r["all"]["n"]),
            fmt(r["all"]),
            fmt(r["public"]),
            fmt(r["heldout"]),
        )
    console.print(table)
