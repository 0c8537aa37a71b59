"""/api/suites, /api/evals, /api/leaderboard: community benchmarks and measurements."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from upstream import suites as domain
from upstream.access import Actor
from upstream.comparisons import Leaderboard, queue_compare
from upstream.comparisons import leaderboard as board
from upstream.engines.base import DEFAULT_MAX_NEW_TOKENS, MAX_NEW_TOKENS
from upstream.evals import queue_eval
from upstream.hub import Hub
from upstream.jobs import Queued
from upstream.reports import MAX_MESSAGES, MAX_TAGS, MessageIn
from upstream.server.body import StrictRoute
from upstream.server.deps import MAX_ID, QueryNumber, get_actor, get_hub

router = APIRouter(tags=["suites"], route_class=StrictRoute)


@router.get("/suites", response_model=domain.SuiteList)
def list_suites(hub: Hub = Depends(get_hub)) -> dict[str, Any]:
    """Every suite with its newest version and split sizes."""
    with hub.session() as s:
        return {"suites": [domain.suite_summary(s, st) for st in domain.list_suites(s)]}


MAX_CASES = 10_000


class BuildRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tag: str = Field(max_length=50, description="collect the confirmed reports with this tag")
    model: str | None = Field(None, max_length=200, description="only this model's reports")
    heldout_percent: int | None = Field(None, ge=0, le=90, description="new suite: held out")


class CaseLine(BaseModel):
    """One case, as a line of `suites import --jsonl` holds it."""

    model_config = ConfigDict(extra="forbid")
    prompt: str | None = None
    messages: list[MessageIn] | None = Field(None, max_length=MAX_MESSAGES)
    expected: dict[str, Any] = Field(description="a check spec")
    tags: list[str] = Field(default_factory=list, max_length=MAX_TAGS)


class CasesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cases: list[CaseLine] = Field(min_length=1, max_length=MAX_CASES)
    model: str | None = Field(None, max_length=200, description="the model this suite is for")
    heldout_percent: int | None = Field(None, ge=0, le=90, description="new suite: held out")


@router.post(
    "/suites/{name}/build", response_model=domain.AddedOut, response_model_exclude_unset=True
)
def build_suite(
    name: str, body: BuildRequest, actor: Actor = Depends(get_actor), hub: Hub = Depends(get_hub)
) -> dict[str, Any]:
    """Add the confirmed reports with `tag` to suite `name` (a maintainer of its model)."""
    return domain.build_from_reports(hub, actor, name, body.tag, body.model, body.heldout_percent)


@router.post(
    "/suites/{name}/cases", response_model=domain.AddedOut, response_model_exclude_unset=True
)
def import_cases(
    name: str, body: CasesRequest, actor: Actor = Depends(get_actor), hub: Hub = Depends(get_hub)
) -> dict[str, Any]:
    """Add cases to suite `name`, all valid or none (a maintainer of its model)."""
    limit = hub.settings.max_prompt_chars
    cases = [
        domain.parse_case_line(c.model_dump(exclude_none=True), f"cases.{i}", limit)
        for i, c in enumerate(body.cases)
    ]
    return domain.import_cases(hub, actor, name, cases, body.model, body.heldout_percent, "api")


@router.get("/suites/{name}", response_model=domain.SuiteView)
def show_suite(
    name: str,
    version: QueryNumber = None,
    actor: Actor = Depends(get_actor),
    hub: Hub = Depends(get_hub),
) -> dict[str, Any]:
    """A suite version's cases; held-out contents only for those who may see them."""
    with hub.session() as s:
        return domain.suite_view(s, name, version, actor)


class EvalRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="NAME or NAME@REV")
    suite: str
    version: int | None = Field(None, ge=1, le=MAX_ID)
    split: Literal["public", "heldout", "all"] = "all"
    max_new_tokens: int = Field(DEFAULT_MAX_NEW_TOKENS, ge=1, le=MAX_NEW_TOKENS)
    full_outputs: bool = Field(
        False, description="generate every answer to the end, not only until its verdict"
    )


@router.post("/evals", status_code=202, response_model=Queued)
def start_eval(
    body: EvalRequest, actor: Actor = Depends(get_actor), hub: Hub = Depends(get_hub)
) -> dict[str, Any]:
    """Queue an evaluation; poll /api/jobs/{id}; its result is the run's summary."""
    job = queue_eval(
        hub,
        actor,
        body.model,
        body.suite,
        version=body.version,
        split=body.split,
        max_new_tokens=body.max_new_tokens,
        full_outputs=body.full_outputs,
    )
    return {"job": job, "state": "queued"}


@router.get("/leaderboard", response_model=Leaderboard)
def leaderboard(suite: str | None = None, hub: Hub = Depends(get_hub)) -> dict[str, Any]:
    """Revisions × suites with pass rates and 95 % intervals."""
    return {"leaderboard": board(hub, suite)}


class CompareRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base: str = Field(max_length=200, description="NAME@REV")
    candidate: str = Field(max_length=200, description="NAME@REV")
    suite: str = Field(max_length=100)
    version: int | None = Field(None, ge=1, le=MAX_ID)
    candidate_adapters: list[str] = Field(
        default_factory=list, max_length=8, description="contributions' adapters, as pr:N"
    )
    max_new_tokens: int = Field(DEFAULT_MAX_NEW_TOKENS, ge=1, le=MAX_NEW_TOKENS)


@router.post("/comparisons", status_code=202, response_model=Queued)
def start_comparison(
    body: CompareRequest, actor: Actor = Depends(get_actor), hub: Hub = Depends(get_hub)
) -> dict[str, Any]:
    """Queue a comparison of a candidate with a base on a suite (a job; its result, as
    `upstream compare --json` prints it, is shown to its asker and admins)."""
    job = queue_compare(
        hub,
        actor,
        body.base,
        body.candidate,
        body.suite,
        body.version,
        body.candidate_adapters,
        body.max_new_tokens,
    )
    return {"job": job, "state": "queued"}
