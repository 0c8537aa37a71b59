"""Failure reports: what a report holds, filing one or many, and finding them again.

Filing validates everything first (model reference, input, check specs, limits), so a
bad report is refused whole and nothing is half-filed. The same normalised content
filed again returns the existing report and counts the new reporter; a report close in
meaning to an open one is linked to it as a likely duplicate (see `duplicates.py`).
Reproduction runs afterwards as a job (see `reproduction.py`); triage is in `triage.py`.

Limits: a prompt (all its messages) up to `max_prompt_chars` characters (32,000), up to
50 variants, 20 tags of up to 50 characters, a description up to 10,000 characters,
`max_new_tokens` from 1 to 4,096, and 10,000 reports in one JSONL file.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy import ColumnElement, Text, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from upstream.access import HUB, Actor, may, require
from upstream.checks import parse_check
from upstream.db.schema import (
    CLOSED_STATUSES,
    REPORT_STATUSES,
    Case,
    Model,
    Report,
    ReportEvent,
    ReportFiling,
    ReportVariant,
    Revision,
    Suite,
    SuiteVersion,
    utcnow,
)
from upstream.engines.base import DEFAULT_MAX_NEW_TOKENS, MAX_NEW_TOKENS, ROLES
from upstream.errors import InvalidInput, NotFound, input_place
from upstream.registry import resolve
from upstream.shapes import Shape
from upstream.suites import split_key, split_of, split_secret
from upstream.threads import Batched

if TYPE_CHECKING:
    from upstream.hub import Hub

REPORT_SCHEMA = 1
SEVERITIES = ("low", "medium", "high", "critical")
SOURCES = ("cli", "api", "web", "feedback", "import")
REPRODUCE_JOB = "reports.reproduce"  # run by `reproduction.reproduce`
STATUSES = REPORT_STATUSES
CLOSED = CLOSED_STATUSES
MAX_VARIANTS = 50
MAX_MESSAGES = 100  # per prompt (and per variant)
MAX_TAGS = 20
MAX_LINES = 10_000


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class VariantIn(BaseModel):
    """Another prompt showing the same failure, optionally with its own check."""

    model_config = ConfigDict(extra="forbid")
    prompt: str | None = None
    messages: list[MessageIn] | None = None
    expected: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_input(self) -> VariantIn:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self


class ReportIn(BaseModel):
    """A report as filed: the JSONL line format and the API's request body."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(description="NAME or NAME@REV")
    prompt: str | None = None
    messages: list[MessageIn] | None = None
    expected: dict[str, Any] | None = Field(None, description="a check spec")
    observed: str | None = Field(None, max_length=100_000)
    tags: list[str] = Field(default_factory=list, max_length=MAX_TAGS)
    severity: Literal["low", "medium", "high", "critical"] = "medium"
    description: str = Field("", max_length=10_000)
    variants: list[str | VariantIn] = Field(default_factory=list, max_length=MAX_VARIANTS)
    max_new_tokens: int = Field(DEFAULT_MAX_NEW_TOKENS, ge=1, le=MAX_NEW_TOKENS)
    license: str = Field("CC-BY-4.0", max_length=40)
    consent: bool = True

    @model_validator(mode="after")
    def _one_input(self) -> ReportIn:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt or messages")
        return self

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: list[str]) -> list[str]:
        for t in tags:
            if not t.strip() or len(t) > 50:
                raise ValueError(f"tag {t!r}: 1 to 50 characters")
            if '"' in t or "\\" in t:
                raise ValueError(f"tag {t!r}: no quotes or backslashes")
        return sorted({t.strip().lower() for t in tags})


def parse_report(data: Any, where: str = "report") -> ReportIn:
    """Validate one report (a dict); errors name each bad field."""
    try:
        return ReportIn.model_validate(data)
    except ValidationError as e:
        field = input_place(e.errors()[0]["loc"]) if e.errors() else ""
        raise InvalidInput(f"{where}: {_pydantic_errors(e)}", field=field or None) from e


def _pydantic_errors(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        raw_loc = [str(x) for x in err["loc"]]
        if "str" in raw_loc and not isinstance(err.get("input"), str):
            continue  # a variant given as an object: the plain-string branch is irrelevant
        loc = input_place(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            model: type[BaseModel] = ReportIn
            if "messages" in raw_loc:
                model = MessageIn
            elif "variants" in raw_loc:
                model = VariantIn
            msg = f"unknown field (allowed: {', '.join(model.model_fields)})"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(dict.fromkeys(parts))


# ---------------------------------------------------------------- preparing


@dataclass
class Prepared:
    """A validated report, resolved against the hub, ready to store."""

    data: ReportIn
    model_id: int
    revision_id: int
    messages: list[dict[str, str]]
    variants: list[tuple[list[dict[str, str]], dict[str, Any] | None]]
    content_hash: str
    vector: Any = None  # the embedding of `text`, when made before filing (a unit vector)

    @property
    def text(self) -> str:
        """The text that is embedded for duplicate detection: the user turns."""
        return "\n".join(m["content"] for m in self.messages if m["role"] == "user")


def prepare(session: Session, data: ReportIn, max_chars: int, where: str = "report") -> Prepared:
    """Resolve the model and check every field; raise InvalidInput naming the first problem."""

    try:
        revision = resolve(session, data.model)
    except NotFound as e:
        raise NotFound(f"{where}.model: {e}") from e
    messages = _messages(data.prompt, data.messages, f"{where}", max_chars)
    if data.expected is not None:
        parse_check(data.expected, f"{where}.expected")
    variants: list[tuple[list[dict[str, str]], dict[str, Any] | None]] = []
    for i, v in enumerate(data.variants):
        w = f"{where}.variants[{i}]"
        if isinstance(v, str):
            variants.append((_messages(v, None, w, max_chars), None))
        else:
            if v.expected is not None:
                parse_check(v.expected, f"{w}.expected")
            variants.append((_messages(v.prompt, v.messages, w, max_chars), v.expected))
    digest = content_hash(
        revision.model.name, revision.hash, messages, [ms for ms, _ in variants], data.expected
    )
    return Prepared(data, revision.model_id, revision.id, messages, variants, digest)


def content_hash(
    model: str,
    revision: str,
    messages: list[dict[str, str]],
    variants: list[list[dict[str, str]]],
    expected: dict[str, Any] | None,
) -> str:
    """The identity of a report's content: same hash, same report."""
    content = {
        "model": model,
        "revision": revision,
        "messages": [_norm_message(m) for m in messages],
        "variants": [[_norm_message(m) for m in ms] for ms in variants],
        "expected": expected,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _messages(
    prompt: str | None, messages: Sequence[MessageIn] | None, where: str, max_chars: int
) -> list[dict[str, str]]:
    if prompt is not None:
        out = [{"role": "user", "content": prompt}]
    else:
        out = [{"role": m.role, "content": m.content} for m in messages or []]
    if len(out) > MAX_MESSAGES:
        raise InvalidInput(f"{where}.messages: {len(out)} messages; at most {MAX_MESSAGES}")
    if not out or not any(m["role"] == "user" for m in out):
        raise InvalidInput(f"{where}.messages: at least one user message is needed")
    if not any(m["content"].strip() for m in out if m["role"] == "user"):
        raise InvalidInput(f"{where}.prompt: is empty")
    size = sum(len(m["content"]) for m in out)
    if size > max_chars:
        raise InvalidInput(f"{where}.prompt: {size} characters; the limit is {max_chars}")
    assert all(m["role"] in ROLES for m in out)
    return out


def _norm_message(m: dict[str, str]) -> dict[str, str]:
    text = " ".join(unicodedata.normalize("NFKC", m["content"]).split()).casefold()
    return {"role": m["role"], "content": text}


# ---------------------------------------------------------------- filing


@dataclass
class Filed:
    id: int
    created: bool  # False: the same content was already reported; this filing was counted
    similar_to: int | None
    distance: float | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


Entry = tuple[Prepared, str, str]  # a prepared report, its reporter, its source


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise InvalidInput(f"source {source!r}: allowed {', '.join(SOURCES)}")


def _queue_reproductions(
    hub: Hub, session: Session, actors: Sequence[Actor], filed: Sequence[Filed]
) -> dict[str, int]:
    """One reproduction job per reporter (`actors[i]` filed `filed[i]`) for their new
    reports, queued in the filing's own transaction; reporter name → job."""
    new: dict[str, list[int]] = {}
    owners: dict[str, Actor] = {}
    for actor, f in zip(actors, filed, strict=True):
        if f.created:
            new.setdefault(actor.name, []).append(f.id)
            owners[actor.name] = actor
    return {
        name: hub.jobs.enqueue_in(session, REPRODUCE_JOB, {"reports": ids}, owner=owners[name])
        for name, ids in new.items()
    }


def _file_and_queue(
    hub: Hub, actors: Sequence[Actor], entries: Sequence[Entry]
) -> tuple[list[Filed], dict[str, int]]:
    """File `entries` (`actors[i]` filing `entries[i]`) and queue their reproduction, in
    one transaction; (filed, reporter name → reproduction job)."""
    jobs: dict[str, int] = {}

    def queue(session: Session, filed: list[Filed]) -> None:
        jobs.clear()  # a retried transaction queues afresh
        jobs.update(_queue_reproductions(hub, session, actors, filed))

    return _file_entries(hub, entries, queue), jobs


def _file_entries(
    hub: Hub, entries: Sequence[Entry], then: Callable[[Session, list[Filed]], Any] | None = None
) -> list[Filed]:
    """`_file`, retried: two filings of the same content at once make the unique content
    hash refuse the second, which is then retried and finds the first (a refiling).
    `then(session, filed)` runs in the same transaction (queueing their reproduction)."""
    for attempt in range(3):
        try:
            return _file(hub, entries, then)
        except IntegrityError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _file(
    hub: Hub, entries: Sequence[Entry], then: Callable[[Session, list[Filed]], Any] | None = None
) -> list[Filed]:
    from upstream import duplicates

    out: list[Filed] = []
    items = [p for p, _, _ in entries]
    with hub.session() as s, s.begin():
        existing = duplicates.find_same_content(s, [p.content_hash for p in items])
        # one batched embedding for the whole filing, one vector per distinct content
        fresh = list({p.content_hash: p for p in items if p.content_hash not in existing}.values())
        todo = [p for p in fresh if p.vector is None]
        vectors: Any = duplicates.embed_texts([p.text for p in todo]) if todo else []
        vector_of = {p.content_hash: p.vector for p in fresh if p.vector is not None}
        vector_of.update((p.content_hash, vectors[i]) for i, p in enumerate(todo))
        hub.similarity.refresh(s, {p.model_id for p in fresh})
        # each model's stored reports against all of its new vectors, in one product
        stored: dict[str, tuple[Any, Any]] = {}  # content hash -> (ids, distances)
        for model_id in {p.model_id for p in fresh}:
            hashes = [p.content_hash for p in fresh if p.model_id == model_id]
            ids, table = hub.similarity.distances(model_id, [vector_of[h] for h in hashes])
            stored.update((h, (ids, table[:, j])) for j, h in enumerate(hashes))
        pending: dict[int, list[tuple[int, Any]]] = {}
        new_by_hash: dict[str, Report] = {}
        for p, reporter, source in entries:
            if p.content_hash in existing or p.content_hash in new_by_hash:
                report = existing.get(p.content_hash) or new_by_hash[p.content_hash]
                s.add(ReportFiling(report_id=report.id, reporter=reporter, source=source))
                s.add(
                    ReportEvent(
                        report_id=report.id,
                        actor=reporter,
                        kind="refiled",
                        note=f"same content filed again via {source}",
                    )
                )
                out.append(Filed(report.id, False, report.similar_to_id, report.similar_distance))
                continue
            vector = vector_of[p.content_hash]
            mine = pending.setdefault(p.model_id, [])
            near = hub.similarity.nearest(
                s, stored[p.content_hash], vector, hub.settings.duplicate_distance, mine
            )
            report = _new_report(p, reporter, source, vector, near)
            s.add(report)
            s.flush()
            mine.append((report.id, vector))
            new_by_hash[p.content_hash] = report
            out.append(Filed(report.id, True, report.similar_to_id, report.similar_distance))
        if then is not None:
            then(s, out)
    return out


def _new_report(
    p: Prepared, reporter: str, source: str, vector: Any, near: tuple[int, float] | None
) -> Report:
    from upstream.embeddings import to_bytes

    d = p.data
    report = Report(
        model_id=p.model_id,
        revision_id=p.revision_id,
        messages=p.messages,
        settings={"max_new_tokens": d.max_new_tokens},
        observed=d.observed,
        expected=d.expected,
        tags=d.tags,
        severity=d.severity,
        description=d.description,
        reporter=reporter,
        source=source,
        license=d.license,
        consent=d.consent,
        status="new",
        content_hash=p.content_hash,
        embedding=to_bytes(vector),
        similar_to_id=near[0] if near else None,
        similar_distance=near[1] if near else None,
    )
    report.variants = [ReportVariant(position=0, messages=p.messages, expected=None)] + [
        ReportVariant(position=i + 1, messages=ms, expected=exp)
        for i, (ms, exp) in enumerate(p.variants)
    ]
    report.filings = [ReportFiling(reporter=reporter, source=source)]
    report.events = [
        ReportEvent(actor=reporter, kind="filed", to_status="new", note=f"filed via {source}")
    ]
    return report


def parse_jsonl(
    raw: bytes, default_model: str | None = None, defaults: dict[str, Any] | None = None
) -> tuple[list[tuple[int, ReportIn]], list[tuple[int, str]]]:
    """Parse a JSONL file of reports: (good lines, bad lines with their reasons).

    `defaults` fill fields a line leaves out (`tags` are added to the line's own).
    """
    good: list[tuple[int, ReportIn]] = []
    bad: list[tuple[int, str]] = []
    rows = raw.split(b"\n")  # only \n ends a line: JSON strings may hold U+2028
    if sum(1 for r in rows if r.strip()) > MAX_LINES:
        raise InvalidInput(f"more than {MAX_LINES} reports in one file; split it")
    for n, raw_row in enumerate(rows, start=1):
        if not raw_row.strip():
            continue
        try:
            data = json.loads(raw_row.decode("utf-8"))
        except UnicodeDecodeError as e:
            bad.append((n, f"not UTF-8 (byte {e.start} of the line)"))
            continue
        except json.JSONDecodeError as e:
            bad.append((n, f"not JSON: {e.msg} at column {e.colno}"))
            continue
        if isinstance(data, dict):
            if default_model and "model" not in data:
                data["model"] = default_model
            for key, value in (defaults or {}).items():
                if key == "tags":
                    data["tags"] = [*data.get("tags", []), *value]
                else:
                    data.setdefault(key, value)
        try:
            good.append((n, parse_report(data, f"line {n}")))
        except InvalidInput as e:
            bad.append((n, str(e).removeprefix(f"line {n}: ")))
    return good, bad


# ---------------------------------------------------------------- reading


@dataclass
class ReportQuery:
    model: str | None = None
    status: str | None = None
    tag: str | None = None
    severity: str | None = None
    text: str | None = None
    limit: int = 100
    offset: int = 0
    viewer: Actor = HUB  # whose view: reports they may not see are left out
    reporter: str | None = None
    cluster: int | None = None  # only the reports linked (transitively) with this one


def hidden_from(session: Session, viewer: Actor) -> ColumnElement[bool] | None:
    """The WHERE clause of the reports `viewer` may see, or None for all of them.

    Hidden, except from their reporter and the maintainers of their model: reports filed
    without consent (kept in this hub, not shared), and reports behind held-out cases
    (their prompts are the held-out inputs)."""
    if may(viewer, "suites.heldout"):
        return None
    own_models = [
        m.id
        for m in session.scalars(select(Model).where(Model.name.in_(list(viewer.model_roles))))
        if may(viewer, "suites.heldout", m.name)
    ]
    behind = _behind_heldout(session)
    visible: ColumnElement[bool] = Report.consent.is_(True)
    if behind:
        visible = visible & Report.id.not_in(behind)
    if not viewer.anonymous:
        visible = visible | (Report.reporter == viewer.name)
    if own_models:
        visible = visible | Report.model_id.in_(own_models)
    return visible


def _behind_heldout(session: Session) -> list[int]:
    """Reports with a case that some suite, in some version, holds out.

    Recomputed only when a suite gains a version (the answer is kept per database, keyed
    by the newest version id)."""
    newest = session.scalar(select(func.max(SuiteVersion.id))) or 0
    bind = session.get_bind()
    key = str(bind.engine.url)
    cached = _BEHIND.get(key)
    if cached is not None and cached[0] == newest:
        return cached[1]
    secret = split_secret(session)
    hidden: set[int] = set()
    for suite in session.scalars(select(Suite).where(Suite.heldout_percent > 0)):
        ids = sorted({i for v in suite.versions for i in v.case_ids})
        for start in range(0, len(ids), 500):  # stay under SQL parameter limits
            rows = session.execute(
                select(Case.report_id).where(
                    Case.id.in_(ids[start : start + 500]), Case.report_id.is_not(None)
                )
            )
            for (rid,) in rows:
                if rid is None:
                    continue
                if split_of(split_key(rid, ""), suite.heldout_percent, secret) == "heldout":
                    hidden.add(rid)
    _BEHIND[key] = (newest, sorted(hidden))
    return _BEHIND[key][1]


_BEHIND: dict[str, tuple[int, list[int]]] = {}


def list_reports(session: Session, q: ReportQuery) -> list[Report]:
    """Reports matching every given filter and visible to `q.viewer`, newest first; the
    page (`limit`, `offset`) is cut by the database, so a page costs the same at any size."""
    stmt = (
        select(Report)
        .order_by(Report.id.desc())
        .options(selectinload(Report.model), selectinload(Report.filings))
    )
    visible = hidden_from(session, q.viewer)
    if visible is not None:
        stmt = stmt.where(visible)
    if q.model:
        name, rev = q.model.partition("@")[::2]
        stmt = stmt.join(Model, Report.model_id == Model.id).where(Model.name == name)
        if rev:
            stmt = stmt.where(Report.revision_id == resolve(session, q.model).id)
    if q.status:
        if q.status not in STATUSES:
            raise InvalidInput(f"status {q.status!r}: allowed {', '.join(STATUSES)}")
        stmt = stmt.where(Report.status == q.status)
    if q.severity:
        if q.severity not in SEVERITIES:
            raise InvalidInput(f"severity {q.severity!r}: allowed {', '.join(SEVERITIES)}")
        stmt = stmt.where(Report.severity == q.severity)
    if q.reporter:
        stmt = stmt.where(Report.reporter == q.reporter)
    if q.cluster is not None:
        stmt = stmt.where(Report.id.in_(cluster_ids(session, q.cluster)))
    if q.text:
        needle = q.text.lower()
        stmt = stmt.where(
            or_(
                func.lower(Report.description).contains(needle, autoescape=True),
                func.lower(Report.messages.cast(Text)).contains(needle, autoescape=True),
            )
        )
    if q.tag:
        # Tags are a JSON list of normalised strings; an element is its JSON text, quoted,
        # which reads the same on SQLite and PostgreSQL (json, not jsonb).
        element = json.dumps(q.tag.strip().lower(), ensure_ascii=False)
        stmt = stmt.where(Report.tags.cast(Text).contains(element, autoescape=True))
    return list(session.scalars(stmt.limit(q.limit).offset(q.offset)))


MAX_CLUSTER = 10_000


def cluster_ids(session: Session, report_id: int) -> set[int]:
    """The reports linked with `report_id` as likely duplicates or duplicates, through
    any chain of links (the same groups as `clusters`), itself included."""
    found, frontier = {report_id}, {report_id}
    links = (Report.similar_to_id, Report.duplicate_of_id)
    while frontier and len(found) < MAX_CLUSTER:
        rows = session.execute(
            select(Report.id, *links).where(
                or_(Report.id.in_(frontier), *(link.in_(frontier) for link in links))
            )
        ).all()
        reached = {i for row in rows for i in row if i is not None}
        frontier = reached - found
        found |= reached
    return found


def visible_ids(session: Session, report_ids: set[int], viewer: Actor) -> list[int]:
    """Those of `report_ids` that `viewer` may see, in order."""
    q = select(Report.id).where(Report.id.in_(report_ids))
    visible = hidden_from(session, viewer)
    return sorted(session.scalars(q.where(visible) if visible is not None else q))


def status_counts(session: Session, viewer: Actor) -> dict[str, int]:
    """How many reports `viewer` may see are in each status."""
    stmt = select(Report.status, func.count()).group_by(Report.status)
    visible = hidden_from(session, viewer)
    if visible is not None:
        stmt = stmt.where(visible)
    counted = dict(session.execute(stmt).tuples().all())
    return {status: counted.get(status, 0) for status in STATUSES}


def get_report(session: Session, report_id: int, viewer: Actor = HUB) -> Report:
    """A report `viewer` may see (NotFound alike for one that is hidden from them)."""
    report = session.get(Report, report_id)
    visible = hidden_from(session, viewer) if report is not None else None
    if report is not None and visible is not None:
        shown = session.scalar(select(Report.id).where(Report.id == report_id, visible))
        report = report if shown is not None else None
    if report is None:
        raise NotFound(f"no report {report_id}")
    return report


class ReportSummary(Shape):
    """A report as lists show it: `reports list --json` and `GET /api/reports`."""

    id: int
    model: str
    status: str
    severity: str
    tags: list[str]
    prompt: str = Field(description="the last user turn")
    reporter: str
    reporters: int = Field(description="how many people filed it")
    filings: int
    reproduction_rate: float | None = Field(description="share of its checked inputs failing")
    similar_to: int | None = Field(description="a likely duplicate, linked when it was filed")
    created_at: str


class VariantOut(Shape):
    position: int = Field(description="0 is the report's own input")
    prompt: str
    expected: dict[str, Any] | None = Field(description="its own check; null: the report's")
    output: str | None = Field(description="what the last reproduction generated")
    passed: bool | None
    score: float | None
    explanation: str


class EventOut(Shape):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)

    actor: str
    kind: str = Field(description="filed, status, confirmation, refiled, check...")
    from_: str = Field(alias="from")
    to: str
    note: str
    at: str


class ReproducedOutput(Shape):
    position: int = Field(description="the input: 0 is the report's own, then its variants")
    output: str | None
    passed: bool | None
    explanation: str


class ReproductionOut(Shape):
    at: str
    rate: float | None = Field(description="share of its checked inputs failing then")
    outputs: list[ReproducedOutput]


class ReportDetail(ReportSummary):
    """The whole report: `reports show --json` and `GET /api/reports/{id}`."""

    schema_: int = Field(alias="schema", description="version of this shape")
    revision: str | None
    messages: list[dict[str, str]]
    settings: dict[str, Any]
    expected: dict[str, Any] | None = Field(description="its check")
    observed: str | None = Field(description="the output the reporter saw")
    description: str
    source: str
    license: str
    consent: bool = Field(description="may be shared upstream")
    similar_distance: float | None
    duplicate_of: int | None
    variants: list[VariantOut]
    confirmations: list[str]
    events: list[EventOut]
    reproductions: list[ReproductionOut] = Field(description="every reproduction, newest first")


class ClusterOut(Shape):
    id: int = Field(description="its first report")
    size: int
    reporters: int
    reports: list[int]
    statuses: list[str]
    prompt: str


class ReportList(Shape):
    reports: list[ReportSummary] | None = Field(None, description="without `clusters`")
    clusters: list[ClusterOut] | None = Field(None, description="with `clusters`")


def report_summary(r: Report) -> dict[str, Any]:
    """The short JSON shape of a report (lists)."""
    return {
        "id": r.id,
        "model": r.model.name,
        "status": r.status,
        "severity": r.severity,
        "tags": r.tags,
        "prompt": prompt_text(r.messages),
        "reporter": r.reporter,
        "reporters": len({f.reporter for f in r.filings}),
        "filings": len(r.filings),
        "reproduction_rate": r.reproduction_rate,
        "similar_to": r.similar_to_id,
        "created_at": _iso(r.created_at),
    }


def report_detail(session: Session, r: Report) -> dict[str, Any]:
    """The whole record: input, check, outputs of reproduction, history."""
    revision = session.get(Revision, r.revision_id)
    return {
        **report_summary(r),
        "schema": REPORT_SCHEMA,
        "revision": revision.hash if revision else None,
        "messages": r.messages,
        "settings": r.settings,
        "expected": r.expected,
        "observed": r.observed,
        "description": r.description,
        "source": r.source,
        "license": r.license,
        "consent": r.consent,
        "similar_distance": r.similar_distance,
        "duplicate_of": r.duplicate_of_id,
        "variants": [
            {
                "position": v.position,
                "prompt": prompt_text(v.messages),
                "expected": v.expected,
                "output": v.output,
                "passed": v.passed,
                "score": v.score,
                "explanation": v.explanation,
            }
            for v in r.variants
        ],
        "confirmations": sorted(c.user for c in r.confirmations),
        "events": [
            {
                "actor": e.actor,
                "kind": e.kind,
                "from": e.from_status,
                "to": e.to_status,
                "note": e.note,
                "at": _iso(e.created_at),
            }
            for e in r.events
        ],
        "reproductions": [
            {"at": _iso(p.created_at), "rate": p.rate, "outputs": p.outputs}
            for p in reversed(r.reproductions)
        ],
    }


def _revision_hash(session: Session, revision_id: int | None) -> str | None:
    revision = session.get(Revision, revision_id) if revision_id else None
    return revision.hash if revision else None


def prompt_text(messages: list[dict[str, str]]) -> str:
    """The last user turn: what a list shows of a report's input."""
    users = [m["content"] for m in messages if m["role"] == "user"]
    return users[-1] if users else ""


def _iso(t: datetime) -> str:
    return t.isoformat()


def touch(report: Report) -> None:
    report.updated_at = utcnow()


# ---------------------------------------------------------------- submitting


@dataclass
class Submission:
    filed: list[Filed]
    invalid: list[tuple[int, str]]  # (line number, reason) of refused lines
    job: int | None = None  # the reproduction of the new reports, queued

    @property
    def to_reproduce(self) -> list[int]:
        """New reports, whose reproduction should run next."""
        return [f.id for f in self.filed if f.created]

    def as_dict(self) -> dict[str, Any]:
        return {
            "filed": [f.as_dict() for f in self.filed],
            "invalid": [{"line": n, "error": e} for n, e in self.invalid],
            "reproduction_job": self.job,
        }


def submit(
    hub: Hub,
    items: Sequence[tuple[int, ReportIn]],
    actor: Actor,
    source: str,
    skip_invalid: bool = False,
    invalid: Sequence[tuple[int, str]] = (),
) -> Submission:
    """Validate every report, then file them all and queue their reproduction, or refuse
    the whole lot.

    `items` are (line number, report) pairs; `invalid` are lines already refused by
    parsing. Unless `skip_invalid`, any bad line refuses the submission, listing every
    bad line and its reason; with it, the good lines are filed and the bad listed.
    """
    bad = list(invalid)
    prepared: list[Prepared] = []
    with hub.session() as s:
        for n, item in items:
            where = f"line {n}" if len(items) > 1 or n > 1 else "report"
            try:
                prepared.append(prepare(s, item, hub.settings.max_prompt_chars, where))
            except InvalidInput as e:
                bad.append((n, str(e).removeprefix(f"{where}: ").removeprefix(f"{where}.")))
            except NotFound as e:
                bad.append((n, str(e).removeprefix(f"{where}.")))
    bad.sort()
    if bad and not skip_invalid:
        listing = "; ".join(f"line {n}: {e}" if n else e for n, e in bad)
        raise InvalidInput(f"{len(bad)} invalid report(s), nothing filed: {listing}")
    for model in sorted({p.data.model.partition("@")[0] for p in prepared}):
        require(actor, "reports.file", model)
    _check_source(source)
    entries = [(p, actor.name, source) for p in prepared]
    filed, jobs = _file_and_queue(hub, [actor] * len(entries), entries) if entries else ([], {})
    return Submission(filed, bad, jobs.get(actor.name))


def submit_one(hub: Hub, item: ReportIn, actor: Actor, source: str) -> Submission:
    """File one report and queue its reproduction; a bad field raises at once with its
    own message.

    Single filings that arrive together (the API's, from many clients) are embedded
    together (`hub.embedder`), then filed together by the hub's `FilingQueue`: one
    transaction, one job per reporter. The two stages overlap: a batch is embedded while
    the one before it is written. Each filing is still checked against the rule book,
    alone, before it waits."""
    require(actor, "reports.file", item.model.partition("@")[0])
    _check_source(source)
    prepared = _prepare_one(hub, item)
    filed, job = hub.filings.file(prepared, actor, source)
    return Submission([filed], [], job)


def file_for_feedback(hub: Hub, item: ReportIn, reporter: Actor) -> Submission:
    """File the report of negative feedback on a served response, as its owner
    (`reporter`): `feedback.give` allowed the feedback, and the report follows from it.
    The same path as any single filing (duplicates, clusters, reproduction)."""
    prepared = _prepare_one(hub, item)
    filed, job = hub.filings.file(prepared, reporter, "feedback")
    return Submission([filed], [], job)


def _prepare_one(hub: Hub, item: ReportIn) -> Prepared:
    """`prepare`, with the text's embedding made (in a batch with the filings arriving
    with it), unless the same content is reported already: a refiling needs none."""
    with hub.session() as s:
        prepared = prepare(s, item, hub.settings.max_prompt_chars)
        known = s.scalar(select(Report.id).where(Report.content_hash == prepared.content_hash))
    if known is None:
        prepared.vector = hub.embedder(prepared.text)
    return prepared


FilingItem = tuple[Prepared, Actor, str]  # a prepared report, who files it, its source


class FilingQueue(Batched[FilingItem, tuple[Filed, int | None]]):
    """Files single reports in batches (`threads.Batched`): one embedding batch for those
    not embedded yet, one transaction, one reproduction job per reporter."""

    MAX_BATCH = 64

    def __init__(self, hub: Hub):
        super().__init__(self._file_batch, self.MAX_BATCH)
        self.hub = hub

    def file(self, prepared: Prepared, actor: Actor, source: str) -> tuple[Filed, int | None]:
        """(what was filed, the reproduction job of a new report)."""
        return self((prepared, actor, source))

    def _file_batch(self, batch: list[FilingItem]) -> list[tuple[Filed, int | None]]:
        entries = [(p, actor.name, source) for p, actor, source in batch]
        filed, jobs = _file_and_queue(self.hub, [actor for _, actor, _ in batch], entries)
        return [
            (f, jobs.get(actor.name) if f.created else None)
            for f, (_, actor, _) in zip(filed, batch, strict=True)
        ]


def _groups(links: Sequence[tuple[int, int | None, int | None]]) -> list[list[int]]:
    """Report ids grouped by their links (id, similar_to, duplicate_of) to one another,
    each group sorted, biggest first."""
    parent = {i: i for i, _, _ in links}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, similar, duplicate in links:
        for other in (similar, duplicate):
            if other is not None and other in parent:
                parent[root(i)] = root(other)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in parent:
        groups[root(i)].append(i)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: (-len(g), g[0]))


def clusters(reports: Sequence[Report]) -> list[dict[str, Any]]:
    """Group reports linked as likely duplicates; biggest clusters first."""
    by_id = {r.id: r for r in reports}
    out: list[dict[str, Any]] = []
    for ids in _groups([(r.id, r.similar_to_id, r.duplicate_of_id) for r in reports]):
        members = [by_id[i] for i in ids]
        out.append(
            {
                "id": ids[0],
                "size": len(ids),
                "reporters": len({f.reporter for m in members for f in m.filings}),
                "reports": ids,
                "statuses": sorted({m.status for m in members}),
                "prompt": prompt_text(members[0].messages),
            }
        )
    return out


def open_clusters(session: Session, viewer: Actor, limit: int = 10) -> list[dict[str, Any]]:
    """The biggest groups (two reports or more) of open reports `viewer` may see, linked
    as likely duplicates: `clusters`' shape, read as id columns, not whole reports."""
    stmt = select(Report.id, Report.similar_to_id, Report.duplicate_of_id, Report.status)
    stmt = stmt.where(Report.status.not_in(CLOSED))
    visible = hidden_from(session, viewer)
    if visible is not None:
        stmt = stmt.where(visible)
    rows = session.execute(stmt).tuples().all()
    status = {i: st for i, _, _, st in rows}
    top = [g for g in _groups([(i, a, b) for i, a, b, _ in rows]) if len(g) > 1][:limit]
    members = [i for g in top for i in g]
    reporters: dict[int, set[str]] = defaultdict(set)
    for report_id, reporter in session.execute(
        select(ReportFiling.report_id, ReportFiling.reporter).where(
            ReportFiling.report_id.in_(members)
        )
    ).tuples():
        reporters[report_id].add(reporter)
    firsts: dict[int, list[dict[str, str]]] = dict(
        session.execute(
            select(Report.id, Report.messages).where(Report.id.in_([g[0] for g in top]))
        )
        .tuples()
        .all()
    )
    return [
        {
            "id": g[0],
            "size": len(g),
            "reporters": len(set().union(*(reporters[i] for i in g))),
            "reports": g,
            "statuses": sorted({status[i] for i in g}),
            "prompt": prompt_text(firsts[g[0]]),
        }
        for g in top
    ]
