"""Contributions: model pull requests, their pushes, and their review.

A contribution proposes a change to one revision of a model: a PEFT LoRA adapter, or a
chat dataset the hub trains into one. Its content is validated before anything is
stored, so bad input is refused at once with the reason; then the CI (`upstream.ci`)
checks it as a job, on open and on every push.

    open → checking → passed | failed → approved → merged
    any state but merged → rejected (a maintainer) | closed (its author or a maintainer)

A maintainer approves a passed contribution, or a failed one only with a written reason
(an override, kept). Nobody approves their own. A new push clears an approval: the
content changed, so it is checked and reviewed again.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from upstream.access import Actor, may, require
from upstream.adapters import ADAPTER_FILES, adapter_files, validate_adapter
from upstream.db import rows_of_model
from upstream.db.schema import (
    Contribution,
    ContributionEvent,
    ContributionPush,
    Report,
    Revision,
    utcnow,
)
from upstream.errors import Conflict, InvalidInput, NotFound
from upstream.registry import get_model, materialize, materialize_files, resolve
from upstream.shapes import Shape

if TYPE_CHECKING:
    from upstream.hub import Hub

STATES = ("open", "checking", "passed", "failed", "approved", "merged", "rejected", "closed")
FINAL = {"merged", "rejected", "closed"}
CHECK_JOB = "contributions.check"
MAX_TITLE = 200
DATASET_FILE = "dataset.jsonl"


@dataclass
class Content:
    """What a push carries: an adapter directory or a dataset's bytes (exactly one)."""

    adapter_dir: Path | None = None
    dataset: bytes | None = None
    dataset_name: str = DATASET_FILE

    @property
    def kind(self) -> str:
        return "adapter" if self.adapter_dir is not None else "dataset"


@dataclass
class ContributionIn:
    model: str  # NAME[@REV]: the revision the change applies to
    title: str
    content: Content
    fixes: list[int] = field(default_factory=list)
    recipe: dict[str, Any] = field(default_factory=dict)  # training overrides
    description: str = ""


def open_contribution(
    hub: Hub, data: ContributionIn, actor: Actor, attempts: int = 3
) -> dict[str, Any]:
    """Validate and store a new contribution and its first push, and queue its checks
    (tried `attempts` times; 1 for a CLI that runs them at once)."""

    require(actor, "contributions.open", data.model.partition("@")[0])
    author = actor.name
    title = data.title.strip()
    if not title or len(title) > MAX_TITLE or "\n" in title:
        raise InvalidInput(f"title: give one line of 1 to {MAX_TITLE} characters")
    _check_content(data.content)
    if data.content.kind == "adapter" and data.recipe:
        raise InvalidInput("recipe: training settings apply to a --dataset, not to an adapter")
    if data.content.kind == "dataset":
        from upstream.training import recipe_from

        recipe_from(data.recipe)  # refuses unknown keys and bad values now, not mid-job
    with hub.session() as s:
        revision = resolve(s, data.model)
        fixes = _check_fixes(s, revision, data.fixes)
        model_id, revision_id = revision.model_id, revision.id
    files, info = _store(hub, revision, data.content)
    with hub.session() as s, s.begin():
        c = Contribution(
            model_id=model_id,
            revision_id=revision_id,
            author=author,
            title=title,
            description=data.description,
            kind=data.content.kind,
            fixes=fixes,
            recipe=data.recipe,
        )
        s.add(c)
        s.flush()
        s.add(
            ContributionPush(
                contribution_id=c.id,
                number=1,
                files=files,
                adapter=files if c.kind == "adapter" else None,
                adapter_info=info,
            )
        )
        _event(s, c, author, "opened", "", "open", title)
        opened: dict[str, Any] = {"id": c.id, "push": 1, "state": c.state, "kind": c.kind}
    return {**opened, "job": _queue_checks(hub, c.id, attempts)}


def push(
    hub: Hub, contribution_id: int, content: Content, actor: Actor, attempts: int = 3
) -> dict[str, Any]:
    """A new version of a contribution's content (same kind); clears any approval and
    queues its checks (tried `attempts` times)."""
    with hub.session() as s:
        c = get_contribution(s, contribution_id)
        require(actor, "contributions.push", c.model.name, owner=c.author)
        _check_open(c, "push to")
        if content.kind != c.kind:
            raise InvalidInput(f"contribution {c.id} is a {c.kind} contribution; push a {c.kind}")
        revision = c.revision
    _check_content(content)
    files, info = _store(hub, revision, content)
    with hub.session() as s, s.begin():
        c = get_contribution(s, contribution_id)
        _check_open(c, "push to")
        number = c.pushes[-1].number + 1
        s.add(
            ContributionPush(
                contribution_id=c.id,
                number=number,
                files=files,
                adapter=files if c.kind == "adapter" else None,
                adapter_info=info,
            )
        )
        _event(s, c, actor.name, "pushed", c.state, "open", f"push {number}")
        c.state = "open"
        c.updated_at = utcnow()
        pushed = {"id": c.id, "push": number, "state": c.state}
    return {**pushed, "job": _queue_checks(hub, contribution_id, attempts)}


def queue_checks(hub: Hub, contribution_id: int, actor: Actor, attempts: int = 3) -> int:
    """Queue the CI again for the newest push (its author or a maintainer); returns the
    job id. An approved contribution keeps its approval: push new content to change it."""
    hub.jobs.reap()  # a check whose worker died leaves the contribution open again
    with hub.session() as s:
        c = get_contribution(s, contribution_id)
        require(actor, "contributions.check", c.model.name, owner=c.author)
        _check_open(c, "check")
        if c.state in ("approved", "checking"):
            raise Conflict(f"contribution {c.id} is {c.state}; its checks are not run again now")
    return _queue_checks(hub, contribution_id, attempts)


def _queue_checks(hub: Hub, contribution_id: int, max_attempts: int) -> int:
    """Queue the CI for the newest push (the hub's own run, on open and push)."""
    with hub.session() as s, s.begin():
        c = get_contribution(s, contribution_id)
        _check_open(c, "check")
        latest = c.pushes[-1]
        job_id = hub.jobs.enqueue(
            CHECK_JOB, {"contribution": c.id, "push": latest.number}, max_attempts
        )
        latest.job_id = job_id
        return job_id


# ---------------------------------------------------------------- review


def approve(
    hub: Hub, contribution_id: int, actor: Actor, comment: str = "", override: str = ""
) -> dict[str, Any]:
    """A maintainer approves a passed contribution, or a failed one with a written reason."""
    with hub.session() as s, s.begin():
        c = get_contribution(s, contribution_id)
        require(actor, "contributions.approve", c.model.name, owner=c.author)
        if c.state == "failed" and c.pushes[-1].verdict == "failed":
            if not override.strip():
                raise Conflict(
                    f"contribution {c.id} failed its checks; a maintainer may approve it only "
                    "with a written reason (--override REASON)"
                )
            _event(s, c, actor.name, "overridden", "failed", "approved", override.strip())
        elif c.state != "passed" or c.pushes[-1].verdict != "passed":
            raise Conflict(
                f"contribution {c.id} is {c.state}; only a passed (or, with a reason, a "
                "failed) contribution can be approved"
            )
        elif override.strip():
            raise InvalidInput(
                f"contribution {c.id} passed its checks; there is nothing to override"
            )
        _event(s, c, actor.name, "approved", c.state, "approved", comment)
        c.state, c.updated_at = "approved", utcnow()
        return contribution_summary(c)


def reject(hub: Hub, contribution_id: int, actor: Actor, reason: str) -> dict[str, Any]:
    """A maintainer rejects a contribution, with the reason."""
    with hub.session() as s, s.begin():
        c = get_contribution(s, contribution_id)
        require(actor, "contributions.reject", c.model.name)
        if not reason.strip():
            raise InvalidInput("reason: say why the contribution is rejected")
        _check_open(c, "reject")
        _event(s, c, actor.name, "rejected", c.state, "rejected", reason.strip())
        c.state, c.updated_at = "rejected", utcnow()
        return contribution_summary(c)


def close(hub: Hub, contribution_id: int, actor: Actor, reason: str = "") -> dict[str, Any]:
    """Its author or a maintainer withdraws a contribution."""
    with hub.session() as s, s.begin():
        c = get_contribution(s, contribution_id)
        require(actor, "contributions.close", c.model.name, owner=c.author)
        _check_open(c, "close")
        _event(s, c, actor.name, "closed", c.state, "closed", reason.strip())
        c.state, c.updated_at = "closed", utcnow()
        return contribution_summary(c)


def set_state(session: Session, c: Contribution, to: str, actor: str, note: str = "") -> None:
    """Record a state change made by the CI or a release."""
    _event(session, c, actor, "checked" if to in ("passed", "failed") else to, c.state, to, note)
    c.state, c.updated_at = to, utcnow()


# ---------------------------------------------------------------- reading


def get_contribution(session: Session, contribution_id: int) -> Contribution:
    c = session.get(Contribution, contribution_id)
    if c is None:
        raise NotFound(f"no contribution {contribution_id}; list them with `upstream prs list`")
    return c


def list_contributions(
    session: Session,
    model: str | None = None,
    state: str | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[Contribution]:
    """Contributions, newest first; a page of them with `limit` and `offset`."""
    q = select(Contribution).order_by(Contribution.id.desc()).limit(limit).offset(offset)
    if model:
        q = q.where(Contribution.model_id == get_model(session, model.partition("@")[0]).id)
    if state:
        if state not in STATES:
            raise InvalidInput(f"state {state!r}: allowed {', '.join(STATES)}")
        q = q.where(Contribution.state == state)
    return list(session.scalars(q))


class ContributionSummary(Shape):
    """A contribution as lists and reviews show it: `GET /api/contributions`, and the
    answer to approve, reject and close."""

    id: int
    title: str
    author: str
    model: str
    revision: str = Field(description="the base revision the change applies to")
    kind: str = Field(description="adapter or dataset")
    fixes: list[int] = Field(description="report ids it claims to fix")
    state: str = Field(description=", ".join(STATES))
    push: int = Field(description="the newest push's number (0 before any)")
    verdict: str = Field(description="the newest push's checks: passed, failed or empty")
    created_at: str
    updated_at: str


class ContributionList(Shape):
    contributions: list[ContributionSummary]


def contribution_summary(c: Contribution) -> dict[str, Any]:
    latest = c.pushes[-1] if c.pushes else None
    return {
        "id": c.id,
        "title": c.title,
        "author": c.author,
        "model": c.model.name,
        "revision": c.revision.hash,
        "kind": c.kind,
        "fixes": list(c.fixes),
        "state": c.state,
        "push": latest.number if latest else 0,
        "verdict": latest.verdict if latest else "",
        "created_at": c.created_at.isoformat(),
        "updated_at": c.updated_at.isoformat(),
    }


def checks_view(report: dict[str, Any], can_see_heldout: bool) -> dict[str, Any]:
    """The check report as a viewer may see it: held-out cases as counts only."""
    if can_see_heldout:
        return report
    view = copy.deepcopy(report)
    # A case id names the same input in every suite, so a case held out anywhere (say a
    # claimed report's case that a community suite holds out) is hidden everywhere.
    hidden = {i for r in view.get("suites", []) for i in r.get("heldout_ids", [])}
    for r in view.get("suites", []):
        for d in r["splits"].values():
            d["fixed"] = [i for i in d["fixed"] if i not in hidden]
            d["broken"] = [i for i in d["broken"] if i not in hidden]
            if "knowledge" in d:  # reports stored before issue 11 have none
                d["knowledge"]["lost"] = [i for i in d["knowledge"]["lost"] if i not in hidden]
        r["cases"] = {i: v for i, v in r["cases"].items() if i not in hidden}
        r["heldout_hidden"] = bool(r.get("heldout_ids"))
        r["heldout_ids"] = []
    return view


class StoredFile(Shape):
    sha256: str = Field(description="its blob in the hub's store")
    size: int = Field(description="bytes")


class AdapterInfoOut(Shape):
    """What a valid adapter changes (`upstream.adapters.AdapterInfo`)."""

    rank: int
    alpha: float
    target_modules: list[str] = Field(description="last names of the adapted modules")
    layers: int = Field(description="base modules that carry a LoRA pair")
    parameters: int = Field(description="elements in all adapter tensors")
    size_bytes: int = Field(description="of adapter_model.safetensors")


class ContributionEventOut(Shape):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    actor: str
    kind: str = Field(description="opened, pushed, checked, approved, rejected, closed...")
    from_: str = Field(alias="from", description="the state before")
    to: str = Field(description="the state after")
    note: str
    at: str


class ContributionDetail(ContributionSummary):
    """The whole contribution: `prs show --json` and `GET /api/contributions/{id}`."""

    description: str
    recipe: dict[str, Any] = Field(description="training overrides (a dataset)")
    files: dict[str, StoredFile] = Field(description="what the newest push carried, by name")
    adapter: dict[str, StoredFile] | None = Field(
        description="the adapter checked: the pushed one, or the one trained from the "
        "dataset (null until trained)"
    )
    adapter_info: AdapterInfoOut | None = Field(description="a pushed adapter's; null: dataset")
    training: dict[str, Any] | None = Field(
        description="a dataset's training run: recipe, losses, seconds (null until trained)"
    )
    job: int | None = Field(description="the job checking the newest push")
    checks: dict[str, Any] | None = Field(
        description="the check report (held-out cases as counts unless maintainer); "
        "null until checked"
    )
    events: list[ContributionEventOut] = Field(description="oldest first")


def contribution_detail(c: Contribution, viewer: Actor) -> dict[str, Any]:
    """Everything about a contribution; held-out case ids only for those who may see them."""
    can_see_heldout = may(viewer, "suites.heldout", c.model.name)
    latest = c.pushes[-1]
    return {
        **contribution_summary(c),
        "description": c.description,
        "recipe": dict(c.recipe),
        "files": latest.files,
        "adapter": latest.adapter,
        "adapter_info": latest.adapter_info,
        "training": latest.training,
        "job": latest.job_id,
        "checks": checks_view(latest.checks, can_see_heldout) if latest.checks else None,
        "events": [
            {
                "actor": e.actor,
                "kind": e.kind,
                "from": e.from_state,
                "to": e.to_state,
                "note": e.note,
                "at": e.created_at.isoformat(),
            }
            for e in c.events
        ],
    }


# ---------------------------------------------------------------- uploads
# An adapter too big for a JSON body is uploaded first, streamed to disk with the cap,
# and named by its sha256 in the contribution. Uploads are private to their uploader,
# few at a time, and gone after a day or once used.

UPLOAD_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_UPLOADS = 8
UPLOAD_LIFE_S = 24 * 3600


def upload_dir(hub: Hub, actor: Actor) -> Path:
    """Where `actor`'s uploads wait (made, and cleared of stale ones, on the way)."""
    require(actor, "contributions.open")
    folder = hub.settings.work_dir / "uploads" / str(actor.user_id or actor.name)
    folder.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for f in folder.iterdir():
        if now - f.stat().st_mtime > UPLOAD_LIFE_S:
            f.unlink(missing_ok=True)
    return folder


def accept_upload(hub: Hub, actor: Actor, written: Path, sha256: str) -> dict[str, Any]:
    """Keep a streamed upload (`written`, already within the cap) as `actor`'s."""
    folder = upload_dir(hub, actor)
    if len([f for f in folder.iterdir() if UPLOAD_RE.match(f.name)]) >= MAX_UPLOADS:
        written.unlink(missing_ok=True)
        raise Conflict(
            f"{MAX_UPLOADS} uploads are waiting already; use them in a contribution or wait "
            "a day for them to expire"
        )
    size = written.stat().st_size
    os.replace(written, folder / sha256)
    return {"upload": sha256, "size": size}


def take_upload(hub: Hub, actor: Actor, sha256: str, to: Path) -> None:
    """Move `actor`'s upload `sha256` to `to` (it is used once)."""
    if not UPLOAD_RE.match(sha256):
        raise InvalidInput("adapter.safetensors_upload: the sha256 (64 hex digits) of an upload")
    found = upload_dir(hub, actor) / sha256
    if not found.is_file():
        raise NotFound(f"no upload {sha256[:12]}… of {actor.name}; POST the file to /api/uploads")
    os.replace(found, to)


def adapter_dir(hub: Hub, files: dict[str, Any]) -> Path:
    """A directory holding an adapter's files (made once per content)."""

    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return materialize_files(hub, files, hub.settings.work_dir / "adapters" / digest)


def contribution_adapter(hub: Hub, ref: str) -> Path:
    """The adapter directory of a contribution named `pr:N` or `N` (its newest push)."""
    m = re.fullmatch(r"(?:pr:)?(\d+)", ref.strip())
    if m is None:
        raise InvalidInput(f"adapter {ref!r}: give a directory or a contribution id (pr:N)")
    with hub.session() as s:
        c = get_contribution(s, int(m.group(1)))
        latest = c.pushes[-1]
        if latest.adapter is None:
            raise Conflict(
                f"contribution {c.id} has no adapter yet: its dataset is trained when it is "
                "checked (`upstream prs check`)"
            )
        files = dict(latest.adapter)
    return adapter_dir(hub, files)


def resolve_adapters(hub: Hub, refs: list[str] | list[Path]) -> list[Path]:
    """Adapter options as directories: a path as is, `pr:N` as contribution N's adapter."""
    out = []
    for ref in refs:
        path = Path(ref)
        if path.is_dir():
            out.append(path)
        elif re.fullmatch(r"(?:pr:)?\d+", str(ref).strip()):
            out.append(contribution_adapter(hub, str(ref)))
        else:
            raise NotFound(f"adapter {ref}: neither a directory nor a contribution id (pr:N)")
    return out


# ---------------------------------------------------------------- internals


def _check_content(content: Content) -> None:
    if (content.adapter_dir is None) == (content.dataset is None):
        raise InvalidInput("give exactly one of an adapter directory or a dataset file")


def _check_open(c: Contribution, what: str) -> None:
    if c.state in FINAL:
        raise Conflict(f"contribution {c.id} is {c.state}; it cannot {what} any more")


def _check_fixes(session: Session, revision: Revision, fixes: list[int]) -> list[int]:
    """The claimed reports: they exist, are of this model, and have a check to score."""
    wanted = sorted(set(fixes))
    reports, other = rows_of_model(session, Report, wanted, revision.model_id, "--fixes: no report")
    if other:
        names = ", ".join(f"{i} ({reports[i].model.name})" for i in other)
        raise InvalidInput(
            f"--fixes: report(s) {names} are of another model; a contribution to "
            f"{revision.model.name} can only claim its reports"
        )
    unchecked = [
        i
        for i in wanted
        if reports[i].expected is None and not any(v.expected for v in reports[i].variants)
    ]
    if unchecked:
        raise InvalidInput(
            f"--fixes: report(s) {', '.join(map(str, unchecked))} have no check, so no fix "
            "can be measured; add the expected answer to the report first"
        )
    return wanted


def read_dataset(hub: Hub, data: bytes, where: str = DATASET_FILE) -> list[Any]:
    """A chat dataset's conversations, within the hub's size and example limits."""
    from upstream.training import parse_dataset

    return parse_dataset(
        data,
        where,
        max_bytes=int(hub.settings.dataset_max_mb * 2**20),
        max_examples=hub.settings.dataset_max_examples,
    )


def stored_dataset(hub: Hub, files: dict[str, Any], where: str = DATASET_FILE) -> list[Any]:
    """The conversations of a push's stored dataset (its blob's hash checked)."""
    return read_dataset(
        hub, hub.blobs.checked_path(files[DATASET_FILE]["sha256"]).read_bytes(), where
    )


def store_adapter(hub: Hub, folder: Path) -> dict[str, Any]:
    """Put an adapter directory's two files in the blob store; file name → {sha256, size}."""

    files = {}
    for name in ADAPTER_FILES:
        blob = hub.blobs.put_file(folder / name)
        files[name] = {"sha256": blob.sha256, "size": blob.size}
    return files


def _store(hub: Hub, revision: Revision, content: Content) -> tuple[dict[str, Any], Any]:
    """Validate the content and put its files in the blob store; (files, adapter info)."""
    settings = hub.settings
    if content.dataset is not None:
        read_dataset(hub, content.dataset, content.dataset_name)
        blob = hub.blobs.put_bytes(content.dataset)
        return {DATASET_FILE: {"sha256": blob.sha256, "size": blob.size}}, None

    assert content.adapter_dir is not None
    source = Path(content.adapter_dir)
    if not source.is_dir():
        raise NotFound(f"adapter {source}: no such directory")
    max_bytes = int(settings.adapter_max_mb * 2**20)
    taken = adapter_files(source, max_bytes)  # an adapter folder, not any tree
    base_dir = materialize(hub, revision)
    # Validate a private copy, then store that copy: what was checked is what is kept.
    with tempfile.TemporaryDirectory(dir=settings.work_dir) as tmp:
        copy = Path(tmp) / "adapter"
        copy.mkdir()
        for f in taken:
            shutil.copyfile(f, copy / f.name)
        info = validate_adapter(
            copy, base_dir, max_rank=settings.adapter_max_rank, max_bytes=max_bytes
        )
        files = store_adapter(hub, copy)
    return files, info.as_dict()


def _event(
    session: Session, c: Contribution, actor: str, kind: str, frm: str, to: str, note: str = ""
) -> None:
    session.add(
        ContributionEvent(
            contribution_id=c.id, actor=actor, kind=kind, from_state=frm, to_state=to, note=note
        )
    )
