"""`upstream models`: import, list and show models and their revisions."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from upstream import registry
from upstream.cli.common import (
    AsOption,
    JsonOption,
    console,
    current_actor,
    emit_json,
    err_console,
    human_count,
    human_size,
    open_hub,
    progress_bar,
)
from upstream.releases import export_revision

app = typer.Typer(help="Import, list and show models and their revisions.", no_args_is_help=True)


@app.command("import")
def import_(
    source: str = typer.Argument(
        ...,
        help="A Hugging Face model directory, a .gguf file, a repo id in the local HF "
        "cache, or bundled:smollm2-135m-instruct.",
    ),
    name: str = typer.Option(..., "--name", help="Model name in this hub (lowercase)."),
    as_user: str = AsOption,
    json_out: bool = JsonOption,
) -> None:
    """Import a model as a new revision (nothing is stored twice)."""
    hub = open_hub(create=True)
    job = registry.queue_import(hub, current_actor(hub, as_user), source, name, attempts=1)
    with progress_bar(f"importing {name}") as update:
        result = hub.jobs.run_now(job, update)
    if json_out:
        emit_json(result)
        return
    short = result["revision"][:12]
    if result["new"]:
        console.print(
            f"imported [bold]{escape(name)}@{short}[/] ({human_size(result['total_bytes'])}, "
            f"{human_size(result['stored_bytes'])} new in the blob store), tagged latest",
            markup=True,
        )
    else:
        console.print(f"already stored: {name}@{short} has exactly these files; nothing new stored")


@app.command("list")
def list_(json_out: bool = JsonOption) -> None:
    """List the models in this hub with their latest revision."""
    hub = open_hub()
    with hub.session() as s:
        models = [registry.model_summary(m) for m in registry.list_models(s)]
    if json_out:
        emit_json({"models": models}, registry.ModelList)
        return
    if not models:
        err_console.print("no models yet; import one with `upstream models import`")
        return
    table = Table("model", "latest", "revisions", "architecture", "parameters", "tags")
    for m in models:
        table.add_row(
            m["name"],
            (m["latest"] or "-")[:12],
            str(m["revisions"]),
            m["architecture"] or "-",
            human_count(m["num_parameters"] or 0),
            ", ".join(m["tags"]),
        )
    console.print(table)


@app.command("show")
def show(
    ref: str = typer.Argument(..., help="NAME or NAME@REV (a tag or id prefix)."),
    json_out: bool = JsonOption,
) -> None:
    """Show one revision: id, tags, architecture, files, source and lineage."""
    hub = open_hub()
    with hub.session() as s:
        rev = registry.resolve(s, ref)
        info = registry.revision_summary(rev.model, rev)
        others = [(r.hash[:12], registry.tags_of(rev.model, r)) for r in rev.model.revisions]
    if json_out:
        emit_json(info, registry.RevisionOut)
        return
    console.print(
        f"[bold]{info['model']}@{info['short']}[/]  tags: {', '.join(info['tags']) or '-'}",
        markup=True,
    )
    console.print(f"revision     {info['revision']}")
    console.print(
        f"architecture {info['architecture']}  ({human_count(info['num_parameters'])} "
        f"parameters, {human_size(info['size_bytes'])})"
    )
    source = info["source"]
    details = ", ".join(
        f"{k} {v[:12] if k == 'sha256' else v}"
        for k, v in source.items()
        if k not in ("kind", "source")
    )
    console.print(
        f"source       {source.get('source', source.get('kind'))}"
        + (f"  ({details})" if details else "")
    )
    console.print(f"created      {info['created_at']}")
    table = Table("file", "size")
    for path, size in info["files"].items():
        table.add_row(path, human_size(size))
    console.print(table)
    console.print(
        "revisions of this model: "
        + "; ".join(f"{h} ({', '.join(t) or 'untagged'})" for h, t in others)
    )


@app.command("tag")
def tag(
    ref: str = typer.Argument(..., help="NAME@REV to tag (REV: a tag or id prefix)."),
    name: str = typer.Argument(..., help="The tag, e.g. stable or v1."),
    as_user: str = AsOption,
    json_out: bool = JsonOption,
) -> None:
    """Point a tag at a revision (moves the tag if it already exists)."""
    hub = open_hub()
    result = registry.tag(hub, current_actor(hub, as_user), ref, name)
    if json_out:
        emit_json(result, registry.TagOut)
    else:
        console.print(f"{result['model']}@{name} -> {result['revision'][:12]}")


@app.command("untag")
def untag(
    model: str = typer.Argument(..., help="Model name."),
    name: str = typer.Argument(..., help="The tag to remove (not latest)."),
    as_user: str = AsOption,
    json_out: bool = JsonOption,
) -> None:
    """Remove a tag from a model."""
    hub = open_hub()
    registry.untag(hub, current_actor(hub, as_user), model, name)  # raises unless removed
    if json_out:
        emit_json({"model": model, "tag": name, "removed": True})
    else:
        console.print(f"removed tag {name} of {model}")


@app.command("export")
def export(
    ref: str = typer.Argument(..., help="NAME@REV (or NAME for latest, NAME@v2 for a tag)."),
    out: Path = typer.Option(..., "--out", help="A new or empty directory."),
    as_user: str = AsOption,
    json_out: bool = JsonOption,
) -> None:
    """Write a revision as a plain transformers directory: weights, tokenizer, model card."""

    hub = open_hub()
    result = export_revision(hub, current_actor(hub, as_user), ref, out)
    if json_out:
        emit_json(result)
    else:
        console.print(
            f"{result['model']}@{result['revision'][:12]} → {result['out']} "
            f"({len(result['files'])} files); load it with "
            "AutoModelForCausalLM.from_pretrained(DIR)",
            highlight=False,
        )
