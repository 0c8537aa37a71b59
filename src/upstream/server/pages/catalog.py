"""Models, suites, evaluations and comparisons, releases, the leaderboard, feedback."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, Response
from markdown_it import MarkdownIt
from sqlalchemy import select
from starlette.datastructures import FormData

from upstream import evals, exports, feedback, registry, suites
from upstream.comparisons import COMPARE_JOB, leaderboard, queue_compare
from upstream.credits import credits_table, ledger
from upstream.db.schema import Release, Report
from upstream.errors import NotFound
from upstream.hub import Hub
from upstream.jobs import job_json
from upstream.releases import get_release, release_summary
from upstream.reports import hidden_from, prompt_text
from upstream.server.deps import MAX_ID, PathId, get_hub
from upstream.server.pages.web import (
    Pager,
    Viewer,
    back,
    field,
    get_viewer,
    pager,
    read_form,
    render,
    safe_path,
    whole,
)

router = APIRouter(include_in_schema=False)
# Model cards are Markdown the hub writes from stored facts; rendered with raw HTML off,
# so nothing in a card (a report's prompt, say) can become markup.
# Links and images are left as text: a page loads and links nothing of another host.
markdown = (
    MarkdownIt("commonmark", {"html": False}).enable("table").disable(["image", "link", "autolink"])
)
ROW = 46  # px per revision in the lineage graph


def render_card(text: str | None) -> tuple[str, str]:
    """A model card as HTML, and its YAML front matter (shown as it is, not as Markdown)."""
    if not text:
        return "", ""
    front = ""
    if text.startswith("---\n") and "\n---\n" in text[4:]:
        front, text = text[4:].split("\n---\n", 1)
    return markdown.render(text), front


@router.get("/models", response_class=HTMLResponse)
def models(
    request: Request, viewer: Viewer = Depends(get_viewer), hub: Hub = Depends(get_hub)
) -> HTMLResponse:
    with hub.session() as s:
        found = [registry.model_summary(m) for m in registry.list_models(s)]
    return render(request, viewer, "models.html", models=found)


def lineage(revisions: list[dict[str, Any]], releases: list[dict[str, Any]]) -> dict[str, Any]:
    """The revisions (newest first) as a graph: a node per revision and an edge from each
    to its parents, with what made it (import, a release's merge of contributions)."""
    row = {r["revision"]: i for i, r in enumerate(revisions)}
    made_by = {r["revision"]: r for r in releases if r["revision"]}
    nodes = [
        {
            **r,
            "y": 24 + i * ROW,
            "release": made_by.get(r["revision"]),
        }
        for i, r in enumerate(revisions)
    ]
    edges = []
    for i, r in enumerate(revisions):
        for p in r["parents"]:
            if p["revision"] in row:
                edges.append({"from": 24 + i * ROW, "to": 24 + row[p["revision"]] * ROW})
    return {"nodes": nodes, "edges": edges, "height": 24 + len(revisions) * ROW}


@router.get("/models/{name}", response_class=HTMLResponse)
def model_page(
    request: Request,
    name: str,
    viewer: Viewer = Depends(get_viewer),
    hub: Hub = Depends(get_hub),
) -> HTMLResponse:
    with hub.session() as s:
        model = registry.get_model(s, name[:200])
        detail = registry.model_detail(model)
        released = [
            release_summary(r)
            for r in s.scalars(
                select(Release).where(Release.model_id == model.id).order_by(Release.id.desc())
            )
        ]
    # the card of the revision `latest` names (the newest may be an unreleased candidate)
    shown = next(
        (r for r in detail["revision_list"] if r["revision"] == detail["latest"]),
        detail["revision_list"][0] if detail["revision_list"] else None,
    )
    card, front = render_card(shown["card"] if shown else None)
    results = [r for r in leaderboard(hub) if r["model"] == detail["name"]]
    return render(
        request,
        viewer,
        "model.html",
        m=detail,
        graph=lineage(detail["revision_list"], released),
        card=card,
        front=front,
        results=results,
        releases=released,
    )


@router.get("/suites", response_class=HTMLResponse)
def suite_list(
    request: Request, viewer: Viewer = Depends(get_viewer), hub: Hub = Depends(get_hub)
) -> HTMLResponse:
    with hub.session() as s:
        found = [suites.suite_summary(s, st) for st in suites.list_suites(s)]
        models = [m.name for m in registry.list_models(s)]
    may_build = [m for m in models if viewer.may("suites.build", m)]
    return render(request, viewer, "suites.html", suites=found, models=may_build)


@router.get("/suites/{name}", response_class=HTMLResponse)
def suite_page(
    request: Request,
    name: str,
    version: int | None = Query(None, ge=1, le=MAX_ID),
    page: Pager = Depends(pager),
    viewer: Viewer = Depends(get_viewer),
    hub: Hub = Depends(get_hub),
) -> HTMLResponse:
    with hub.session() as s:
        view = suites.suite_view(s, name[:100], version, viewer.actor)
        versions = [
            {"number": v.number, "cases": len(v.case_ids), "note": v.note, "at": v.created_at}
            for v in reversed(suites.get_suite(s, name[:100]).versions)
        ]
    cases = view["case_list"][page.offset : page.offset + page.size + 1]
    return render(
        request,
        viewer,
        "suite.html",
        suite=view,
        cases=cases[: page.size],
        pages=page.links(request, len(cases)),
        versions=versions,
        may_build=viewer.may("suites.build", view["model"]),
        may_heldout=viewer.may("suites.heldout", view["model"]),
    )


@router.get("/suites/{name}/cases.jsonl")
def suite_download(
    name: str,
    version: int | None = Query(None, ge=1, le=MAX_ID),
    heldout: bool = False,
    viewer: Viewer = Depends(get_viewer),
    hub: Hub = Depends(get_hub),
) -> Response:
    """A suite version as its jsonl export (the format `suites import` reads)."""
    lines = exports.jsonl_lines(hub, viewer.actor, name[:100], version, heldout)
    filename = f"{name[:100]}{'-with-heldout' if heldout else ''}.jsonl"
    return Response(
        "".join(lines),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@router.post("/suites")
def suite_build(
    form: FormData = Depends(read_form),
    viewer: Viewer = Depends(get_viewer),
    hub: Hub = Depends(get_hub),
) -> Response:
    """Add the confirmed reports with a tag to a suite (made when it is new)."""
    out = suites.build_from_reports(
        hub,
        viewer.actor,
        field(form, "name", 100),
        field(form, "tag", 50),
        field(form, "model", 200) or None,
        whole(form, "heldout_percent", 0, 90),
    )
    added = f"{out['added']} new case{'s' if out['added'] != 1 else ''}"
    return back(f"/suites/{out['suite']}", f"{out['suite']} v{out['version']}: {added}.")


@router.get("/evals", response_class=HTMLResponse)
def eval_list(
    request: Request,
    page: Pager = Depends(pager),
    viewer: Viewer = Depends(get_viewer),
    hub: Hub = Depends(get_hub),
) -> HTMLResponse:
    with hub.session() as s:
        runs = evals.list_runs(s, page.size + 1, page.offset)
        suite_names = [st.name for st in suites.list_suites(s)]
        model_names = [m.name for m in registry.list_models(s)]
    return render(
        request,
        viewer,
        "evals.html",
        runs=runs[: page.size],
        pages=page.links(request, len(runs)),
        suites=suite_names,
        models=model_names,
    )


@router.get("/evals/{run_id}", response_class=HTMLResponse)
def eval_page(
    request: Request,
    run_id: PathId,
    page: Pager = Depends(pager),
    viewer: Viewer = Depends(get_viewer),
    hub: Hub = Depends(get_hub),
) -> HTMLResponse:
    with hub.session() as s:
        run = evals.get_run(s, run_id)
        cases = list(evals.run_cases(s, run_id, viewer.actor).values())
    cases.sort(key=lambda c: (c["passed"], c["case"]))  # failures first
    shown = cases[page.offset : page.offset + page.size + 1]
    hidden = (run["metrics"] or {}).get("all", {}).get("n", 0) - len(cases)
    if hidden > 0 and run["metrics"]:  # tags of what the viewer sees, not of hidden cases
        run["metrics"] = {**run["metrics"], "tags": evals.tag_rates(cases)}
    return render(
        request,
        viewer,
        "eval.html",
        run=run,
        cases=shown[: page.size],
        pages=page.links(request, len(shown)),
        hidden=hidden,
    )


@router.post("/evals/{run_id}/cases/{case_id}/full")
def whole_output(
    run_id: PathId,
    case_id: str = PathParam(pattern=r"^[0-9a-f]{64}$"),
    form: FormData = Depends(read_form),
    viewer: Viewer = Depends(get_viewer),
    hub: Hub = Depends(get_hub),
) -> Response:
    """Generate the whole output of a case whose output stopped at its verdict."""
    out = evals.full_output(hub, viewer.actor, run_id, case_id)
    said = "The whole answer is generated." if out["generated"] else "It was whole already."
    return back(safe_path(field(form, "next", 2000) or f"/evals/{run_id}"), said)


@router.post("/compare")
def start_compare(
    form: FormData = Depends(read_form),
    viewer: Viewer = Depends(get_viewer),
    hub: Hub = Depends(get_hub),
) -> Response:
    job = queue_compare(
        hub,
        viewer.actor,
        field(form, "base", 200),
        field(form, "candidate", 200),
        field(form, "suite", 100),
    )
    return back(f"/compare/{job}")


@router.get("/compare/{job_id}", response_class=HTMLResponse)
def compare_page(
    request: Request,
    job_id: PathId,
    viewer: Viewer = Depends(get_viewer),
    hub: Hub = Depends(get_hub),
) -> HTMLResponse:
    found = hub.jobs.get(job_id)
    if found.kind != COMPARE_JOB:
        raise NotFound(f"job {job_id} is not a comparison")
    job = job_json(found, viewer.actor)
    result, rows = job["result"], []
    if result:
        d = result["splits"]["all"]
        how = {i: "broken" for i in d["broken"]} | {i: "fixed" for i in d["fixed"]}
        with hub.session() as s:
            base = evals.run_cases(s, result["base"]["run"], viewer.actor, list(how))
            cand = evals.run_cases(s, result["candidate"]["run"], viewer.actor, list(how))
        rows = [
            {"how": how[i], "base": base[i], "candidate": cand[i]}
            for i in how
            if i in base and i in cand
        ]
    return render(request, viewer, "compare.html", job=job, result=result, rows=rows)


@router.get("/releases", response_class=HTMLResponse)
def release_list(
    request: Request,
    page: Pager = Depends(pager),
    viewer: Viewer = Depends(get_viewer),
    hub: Hub = Depends(get_hub),
) -> HTMLResponse:
    with hub.session() as s:
        q = select(Release).order_by(Release.id.desc()).limit(page.size + 1).offset(page.offset)
        found = [release_summary(r) for r in s.scalars(q)]
    return render(
        request,
        viewer,
        "releases.html",
        releases=found[: page.size],
        pages=page.links(request, len(found)),
    )


@router.get("/releases/{release_id}", response_class=HTMLResponse)
def release_page(
    request: Request,
    release_id: PathId,
    viewer: Viewer = Depends(get_viewer),
    hub: Hub = Depends(get_hub),
) -> HTMLResponse:
    with hub.session() as s:
        release = get_release(s, release_id)
        summary = release_summary(release)
        credits = ledger(s, release_id)
        totals = credits_table(s, release_id=release_id)
        card, front = render_card(release.revision.card if release.revision else None)
        fixed = []
        if release.revision_id is not None:  # the reports it fixed that the viewer may see
            q = select(Report).where(Report.fixed_in_revision_id == release.revision_id)
            visible = hidden_from(s, viewer.actor)
            if visible is not None:
                q = q.where(visible)
            fixed = [
                {"id": r.id, "prompt": prompt_text(r.messages), "reporter": r.reporter}
                for r in s.scalars(q.order_by(Report.id).limit(500))
            ]
    return render(
        request,
        viewer,
        "release.html",
        r=summary,
        credits=credits,
        totals=totals,
        fixed=fixed,
        card=card,
        front=front,
    )


@router.get("/leaderboard", response_class=HTMLResponse)
def board(
    request: Request, viewer: Viewer = Depends(get_viewer), hub: Hub = Depends(get_hub)
) -> HTMLResponse:
    rows = leaderboard(hub)
    by_suite: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_suite.setdefault(r["suite"], []).append(r)
    with hub.session() as s:
        people = credits_table(s)
    return render(request, viewer, "leaderboard.html", suites=by_suite, people=people)


@router.get("/feedback", response_class=HTMLResponse)
def feedback_page(
    request: Request,
    model: str = Query("", max_length=200),
    viewer: Viewer = Depends(get_viewer),
    hub: Hub = Depends(get_hub),
) -> HTMLResponse:
    # read by maintainers (of a model, or of the hub); others are told so, not refused
    may_read = viewer.may("feedback.read", model or None) or (
        not model and any(viewer.may("feedback.read", m) for m in viewer.actor.model_roles)
    )
    per_revision: list[dict[str, Any]] = []
    corrections: list[dict[str, Any]] = []
    if may_read:
        per_revision = feedback.stats(hub, viewer.actor, model or None)
        negative = feedback.list_feedback(hub, viewer.actor, model or None, True, 200)
        corrections = [f for f in negative if f["correction"]]
    return render(
        request,
        viewer,
        "feedback.html",
        stats=per_revision,
        corrections=corrections[:50],
        may_read=may_read,
    )
