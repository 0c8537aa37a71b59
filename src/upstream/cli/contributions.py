"""`upstream contribute` and `upstream prs`: model pull requests and their review."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from upstream import contributions as domain
from upstream import feedback
from upstream.access import Actor
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
from upstream.errors import InvalidInput
from upstream.hub import Hub

app = typer.Typer(
    help="Model pull requests: list, show their checks, push, approve, reject.",
    no_args_is_help=True,
)

NoCheckOption = typer.Option(
    False, "--no-check", help="Queue the checks for a worker (`upstream up`) instead of now."
)


def contribute(
    model: str = typer.Option(..., "--model", help="NAME@REV the change applies to."),
    title: str = typer.Option(..., "--title", help="One line saying what it fixes."),
    adapter: Path = typer.Option(
        None, "--adapter", help="A PEFT LoRA directory (adapter_config.json + safetensors)."
    ),
    dataset: Path = typer.Option(
        None, "--dataset", help="Chat JSONL (OpenAI fine-tuning format) to train an adapter on."
    ),
    from_feedback: bool = typer.Option(
        False,
        "--from-feedback",
        help="Train on the corrections users sent for this revision (`upstream feedback "
        "list`); it claims the reports their feedback filed.",
    ),
    feedback_ids: str = typer.Option(
        "", "--feedback", help="With --from-feedback: only these feedback ids, e.g. 4,9."
    ),
    fixes: str = typer.Option("", "--fixes", help="Report ids it fixes, e.g. 3,7,12."),
    description: str = typer.Option("", "--description", help="More words for reviewers."),
    recipe: str = typer.Option(
        "",
        "--recipe",
        help='Training overrides as JSON, e.g. \'{"rank": 16, "epochs": 2}\' (see docs).',
    ),
    no_check: bool = NoCheckOption,
    as_user: str = AsOption,
    json_out: bool = JsonOption,
) -> None:
    """Open a contribution (adapter, dataset, or users' corrections) against a revision,
    then check it."""
    hub = open_hub()
    if from_feedback:
        if adapter is not None or dataset is not None:
            raise InvalidInput("--from-feedback makes the dataset: leave out --adapter/--dataset")
        actor = current_actor(hub, as_user)
        opened = feedback.contribute(
            hub,
            actor,
            model,
            title,
            number_list(feedback_ids, int, "--feedback", "feedback ids") or None,
            _recipe(recipe),
            description,
            number_list(fixes, int, "--fixes", "report ids"),
            attempts=3 if no_check else 1,
        )
        if not json_out:
            console.print(
                f"opened contribution #{opened['id']} from {opened['examples']} correction(s)"
            )
        _check_and_show(hub, opened["id"], opened["job"], no_check, json_out, actor)
        return
    elif feedback_ids:
        raise InvalidInput("--feedback picks corrections for --from-feedback")
    data = domain.ContributionIn(
        model=model,
        title=title,
        content=_content(adapter, dataset),
        fixes=number_list(fixes, int, "--fixes", "report ids"),
        recipe=_recipe(recipe),
        description=description,
    )
    actor = current_actor(hub, as_user)
    opened = domain.open_contribution(hub, data, actor, attempts=3 if no_check else 1)
    if not json_out:
        console.print(f"opened contribution #{opened['id']} ({opened['kind']})")
    _check_and_show(hub, opened["id"], opened["job"], no_check, json_out, actor)


@app.command("list")
def list_(
    model: str = typer.Option(None, "--model", help="Only this model's contributions."),
    state: str = typer.Option(None, "--state", help=f"One of: {', '.join(domain.STATES)}."),
    json_out: bool = JsonOption,
) -> None:
    """List contributions, newest first."""
    hub = open_hub()
    with hub.session() as s:
        rows = [domain.contribution_summary(c) for c in domain.list_contributions(s, model, state)]
    if json_out:
        emit_json({"contributions": rows}, domain.ContributionList)
        return
    if not rows:
        err_console.print("no contributions match")
        return
    table = Table("id", "model", "kind", "state", "author", "fixes", "title")
    for r in rows:
        table.add_row(
            str(r["id"]),
            f"{r['model']}@{r['revision'][:8]}",
            r["kind"],
            r["state"],
            r["author"],
            ",".join(map(str, r["fixes"])),
            r["title"],
        )
    console.print(table)


@app.command("show")
def show(
    contribution_id: int = typer.Argument(..., min=1, max=MAX_ID, help="The contribution's id."),
    as_user: str = AsOption,
    json_out: bool = JsonOption,
) -> None:
    """Show a contribution with its check report and history."""
    hub = open_hub()
    detail = _detail(hub, contribution_id, current_actor(hub, as_user))
    if json_out:
        emit_json(detail, domain.ContributionDetail)
    else:
        print_detail(detail)


@app.command("push")
def push(
    contribution_id: int = typer.Argument(..., min=1, max=MAX_ID, help="The contribution's id."),
    adapter: Path = typer.Option(None, "--adapter", help="The new adapter directory."),
    dataset: Path = typer.Option(None, "--dataset", help="The new dataset file."),
    no_check: bool = NoCheckOption,
    as_user: str = AsOption,
    json_out: bool = JsonOption,
) -> None:
    """Push new content to your contribution; it is checked again."""
    hub = open_hub()
    actor = current_actor(hub, as_user)
    content = _content(adapter, dataset)
    pushed = domain.push(hub, contribution_id, content, actor, attempts=3 if no_check else 1)
    if not json_out:
        console.print(f"contribution #{contribution_id}: push {pushed['push']}")
    _check_and_show(hub, contribution_id, pushed["job"], no_check, json_out, actor)


@app.command("check")
def check(
    contribution_id: int = typer.Argument(..., min=1, max=MAX_ID, help="The contribution's id."),
    no_check: bool = NoCheckOption,
    as_user: str = AsOption,
    json_out: bool = JsonOption,
) -> None:
    """Run the checks of a contribution's newest push again (its author or a maintainer)."""
    hub = open_hub()
    actor = current_actor(hub, as_user)
    job = domain.queue_checks(hub, contribution_id, actor, attempts=3 if no_check else 1)
    _check_and_show(hub, contribution_id, job, no_check, json_out, actor)


@app.command("approve")
def approve(
    contribution_id: int = typer.Argument(..., min=1, max=MAX_ID, help="The contribution's id."),
    comment: str = typer.Option("", "--comment", help="A note for the author."),
    override: str = typer.Option(
        "", "--override", help="Approve a failed contribution; the written reason is kept."
    ),
    as_user: str = AsOption,
    json_out: bool = JsonOption,
) -> None:
    """Approve a passed contribution (maintainers; not your own)."""
    hub = open_hub()
    result = domain.approve(hub, contribution_id, current_actor(hub, as_user), comment, override)
    _say(result, json_out)


@app.command("reject")
def reject(
    contribution_id: int = typer.Argument(..., min=1, max=MAX_ID, help="The contribution's id."),
    reason: str = typer.Option(..., "--reason", help="Why it is rejected."),
    as_user: str = AsOption,
    json_out: bool = JsonOption,
) -> None:
    """Reject a contribution, with the reason (maintainers)."""
    hub = open_hub()
    _say(domain.reject(hub, contribution_id, current_actor(hub, as_user), reason), json_out)


@app.command("close")
def close(
    contribution_id: int = typer.Argument(..., min=1, max=MAX_ID, help="The contribution's id."),
    reason: str = typer.Option("", "--reason", help="Why (optional)."),
    as_user: str = AsOption,
    json_out: bool = JsonOption,
) -> None:
    """Withdraw a contribution (its author or a maintainer)."""
    hub = open_hub()
    _say(domain.close(hub, contribution_id, current_actor(hub, as_user), reason), json_out)


# ---------------------------------------------------------------- helpers


def _content(adapter: Path | None, dataset: Path | None) -> domain.Content:
    if (adapter is None) == (dataset is None):
        raise InvalidInput("give exactly one of --adapter DIR or --dataset FILE.jsonl")
    if dataset is not None:
        if not dataset.is_file():
            raise InvalidInput(f"--dataset {dataset}: no such file")
        return domain.Content(dataset=dataset.read_bytes(), dataset_name=dataset.name)
    return domain.Content(adapter_dir=adapter)


def _recipe(text: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidInput(f"--recipe: not JSON ({e.msg})") from e
    if not isinstance(value, dict):
        raise InvalidInput("--recipe: give a JSON object of training settings")
    return value


def _detail(hub: Hub, contribution_id: int, viewer: Actor) -> dict[str, Any]:
    with hub.session() as s:
        return domain.contribution_detail(domain.get_contribution(s, contribution_id), viewer)


def _check_and_show(
    hub: Hub, contribution_id: int, job_id: int, queue: bool, json_out: bool, viewer: Actor
) -> None:
    """Run the queued check `job_id` now and show the verdict, or say it is queued."""
    if queue:
        if json_out:
            push = _detail(hub, contribution_id, viewer)["push"]  # the push being checked
            emit_json(
                {"contribution": contribution_id, "push": push, "job": job_id, "state": "queued"}
            )
        else:
            console.print(f"checks queued as job {job_id} (run `upstream up` or `upstream worker`)")
        return
    with progress_bar("checking") as update:
        hub.jobs.run_now(job_id, update)
    detail = _detail(hub, contribution_id, viewer)
    if json_out:
        emit_json(detail, domain.ContributionDetail)
    else:
        print_detail(detail)


def _say(result: dict[str, Any], json_out: bool) -> None:
    if json_out:
        emit_json(result)
    else:
        console.print(f"contribution #{result['id']} is {result['state']}")


def print_detail(d: dict[str, Any]) -> None:
    """A contribution and its check report, for a terminal."""
    console.print(
        f"[bold]#{d['id']} {escape(d['title'])}[/]  ({d['state']})", markup=True, highlight=False
    )
    console.print(
        f"{d['kind']} by {d['author']} against {d['model']}@{d['revision'][:12]}, "
        f"push {d['push']}" + (f", claims to fix reports {d['fixes']}" if d["fixes"] else ""),
        highlight=False,
    )
    if d.get("adapter_info"):
        a = d["adapter_info"]
        console.print(f"adapter: rank {a.get('rank')}, {a.get('layers')} layers")
    t = d.get("training")
    if t:
        replayed = t.get("replayed", 0)  # trainings before replay have none
        examples = f"{t['examples'] - replayed} examples" + (
            f" + {replayed} of the base's own answers replayed" if replayed else ""
        )
        console.print(
            f"training: {examples}, {t['epochs']} epochs, {t['steps']} steps in "
            f"{t['seconds']:.0f} s; loss {t['first_loss']:.3f} → {t['last_loss']:.3f}"
        )
    checks = d.get("checks")
    if not checks:
        console.print("checks: not run yet" if d["state"] != "checking" else "checks: running")
    else:
        verdict = "[green]passed[/]" if checks["passed"] else "[red]failed[/]"
        console.print(f"\nverdict: {verdict}", markup=True)
        for reason in checks["reasons"]:
            console.print(f"  {reason}", markup=False, highlight=False)
        table = Table(
            "suite",
            "split",
            "cases",
            "base",
            "candidate",
            "fixed",
            "broken",
            "knowledge lost",
            "Δ [95% CI]",
            "p",
        )
        for r in checks["suites"]:
            for split, x in r["splits"].items():
                pd = x["paired"]
                lost = x.get("knowledge")  # reports checked before issue 11 have none
                table.add_row(
                    r["suite"],
                    split,
                    str(x["n"]),
                    f"{x['base_rate']:.0%}",
                    f"{x['cand_rate']:.0%}",
                    str(x["fixed_count"]),
                    str(x["broken_count"]),
                    f"{lost['lost_count']} of {lost['knew']}" if lost else "-",
                    f"{pd['diff']:+.0%} [{pd['low']:+.0%}, {pd['high']:+.0%}]",
                    f"{x['p_value']:.3g}",
                )
        console.print(table)
        for r in checks["suites"]:
            all_ = r["splits"]["all"]
            named = {"fixed": all_["fixed"], "broken": all_["broken"]}
            if "knowledge" in all_:
                gone = all_["knowledge"]["lost"]  # a broken case is named once
                named["knowledge lost"] = [i for i in gone if i not in all_["broken"]]
            for key, ids in named.items():
                shown = [r["cases"][i] for i in ids if i in r["cases"]]
                for case in shown[:10]:
                    console.print(
                        f"  {key} in {r['suite']}: {case['prompt'][:90]!r}",
                        markup=False,
                        highlight=False,
                    )
            if r.get("heldout_hidden"):
                console.print(f"  ({r['suite']}: held-out cases are shown as counts only)")
    console.print("\nhistory:")
    for e in d["events"]:
        note = f" — {e['note']}" if e["note"] else ""
        console.print(
            f"  {e['at'][:19]} {e['actor']}: {e['kind']} {e['to']}{note}",
            markup=False,
            highlight=False,
        )
