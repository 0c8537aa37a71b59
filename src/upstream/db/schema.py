"""Every table of the hub, readable in one place.

Changes to these classes need a migration in `migrations/versions/`; a test compares
the migrated database with this metadata.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


# Ids are database keys, 1 to 2**63 - 1: a larger number is refused as input by every
# interface, never handed to the database (where it would overflow).
MAX_ID = 2**63 - 1

# A report's life (docs/reports.md); the closed ones are no one's open work.
REPORT_STATUSES = (
    "new",
    "reproduced",
    "not_reproduced",
    "needs_check",
    "confirmed",
    "fixed",
    "wontfix",
    "duplicate",
)
CLOSED_STATUSES = ("fixed", "wontfix", "duplicate")


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class Model(Base):
    """A named model; its content lives in revisions."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    revisions: Mapped[list[Revision]] = relationship(
        back_populates="model", order_by="Revision.id", cascade="all, delete-orphan"
    )
    tags: Mapped[list[Tag]] = relationship(back_populates="model", cascade="all, delete-orphan")


class Revision(Base):
    """An immutable version of a model: a manifest of content-addressed files.

    `hash` is the sha256 of the canonical manifest JSON, so the same files always give
    the same revision id.
    """

    __tablename__ = "revisions"
    __table_args__ = (UniqueConstraint("model_id", "hash"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    hash: Mapped[str] = mapped_column(String(64), index=True)
    # {"schema": 1, "files": {relative path: {"sha256": ..., "size": ...}}}
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    architecture: Mapped[str] = mapped_column(String(100))
    num_parameters: Mapped[int] = mapped_column(Integer, default=0)
    # How it was made: {"kind": "bundled" | "gguf" | "hf_dir" | "hf_cache", ...}
    source: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    card: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    model: Mapped[Model] = relationship(back_populates="revisions")
    parents: Mapped[list[RevisionParent]] = relationship(
        foreign_keys="RevisionParent.child_id", cascade="all, delete-orphan"
    )

    @property
    def total_size(self) -> int:
        return sum(int(f["size"]) for f in self.manifest["files"].values())


class RevisionParent(Base):
    """Lineage: a revision made from others (a merge's base and contributions)."""

    __tablename__ = "revision_parents"

    child_id: Mapped[int] = mapped_column(ForeignKey("revisions.id"), primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("revisions.id"), primary_key=True)
    role: Mapped[str] = mapped_column(String(40), default="base")


class Tag(Base):
    """A movable name for a revision of one model (`latest`, `v2`, user tags)."""

    __tablename__ = "tags"

    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    revision_id: Mapped[int] = mapped_column(ForeignKey("revisions.id"))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    model: Mapped[Model] = relationship(back_populates="tags")
    revision: Mapped[Revision] = relationship()


class Job(Base):
    """A durable long operation; any worker may run it, a dead worker's job is retried."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(60), index=True)
    args: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # queued -> running -> done | failed; running with a stale heartbeat is claimable again
    state: Mapped[str] = mapped_column(String(20), default="queued", index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    progress_total: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    worker: Mapped[str] = mapped_column(String(100), default="")
    # a job handed by a CLI to one worker: only that worker (or a claim by id) takes it
    for_worker: Mapped[str] = mapped_column(String(100), default="", server_default="")
    # who queued it ("" for the hub's own work), and who asked it to stop
    owner: Mapped[str] = mapped_column(String(100), default="", server_default="")
    cancelled_by: Mapped[str] = mapped_column(String(100), default="", server_default="")
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WorkerProcess(Base):
    """A worker that is up: `upstream up`'s thread or an `upstream worker` process.

    It beats every few seconds and names the job it runs, so a CLI on the same host can
    hand a job to an idle worker (whose models may already be loaded) instead of
    starting its own.
    """

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    host: Mapped[str] = mapped_column(String(255), index=True)
    version: Mapped[str] = mapped_column(String(40))  # Upstream's; jobs go to the same only
    job_id: Mapped[int | None] = mapped_column(Integer)  # the job it runs; None when idle
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Report(Base):
    """A structured failure finding against a model revision."""

    __tablename__ = "reports"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    revision_id: Mapped[int] = mapped_column(ForeignKey("revisions.id"), index=True)
    # The chat messages of the failing input (a bare prompt is one user message).
    messages: Mapped[list[Any]] = mapped_column(JSON)
    # Generation settings for reproduction: {"max_new_tokens": ..., "stop": [...]}; greedy.
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    observed: Mapped[str | None] = mapped_column(Text)
    expected: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # a check spec
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    severity: Mapped[str] = mapped_column(String(20), default="medium", index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    reporter: Mapped[str] = mapped_column(String(100), index=True)
    source: Mapped[str] = mapped_column(String(20), default="cli")
    license: Mapped[str] = mapped_column(String(40), default="CC-BY-4.0")
    consent: Mapped[bool] = mapped_column(default=True)  # may be shared upstream
    status: Mapped[str] = mapped_column(String(20), default="new", index=True)
    # Share of the prompt and its variants on which the failure reproduced (0..1).
    reproduction_rate: Mapped[float | None] = mapped_column(Float)
    reproduced_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # sha256 of the normalised content; the same content filed again is the same report
    content_hash: Mapped[str] = mapped_column(String(64), index=True, unique=True)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)  # float32 (384,)
    # A likely duplicate: the nearest open report of the same model, and how near.
    similar_to_id: Mapped[int | None] = mapped_column(ForeignKey("reports.id"), index=True)
    similar_distance: Mapped[float | None] = mapped_column(Float)
    duplicate_of_id: Mapped[int | None] = mapped_column(ForeignKey("reports.id"))
    fixed_in_revision_id: Mapped[int | None] = mapped_column(ForeignKey("revisions.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    model: Mapped[Model] = relationship()
    revision: Mapped[Revision] = relationship(foreign_keys=[revision_id])
    variants: Mapped[list[ReportVariant]] = relationship(
        order_by="ReportVariant.position", cascade="all, delete-orphan"
    )
    events: Mapped[list[ReportEvent]] = relationship(
        order_by="ReportEvent.id", cascade="all, delete-orphan"
    )
    filings: Mapped[list[ReportFiling]] = relationship(
        order_by="ReportFiling.id", cascade="all, delete-orphan"
    )
    confirmations: Mapped[list[ReportConfirmation]] = relationship(cascade="all, delete-orphan")
    reproductions: Mapped[list[ReportReproduction]] = relationship(
        order_by="ReportReproduction.id", cascade="all, delete-orphan"
    )


class ReportVariant(Base):
    """One input of a report: position 0 is the report's own prompt, then its variants."""

    __tablename__ = "report_variants"

    id: Mapped[int] = mapped_column(primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    messages: Mapped[list[Any]] = mapped_column(JSON)
    expected: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # None: the report's check
    output: Mapped[str | None] = mapped_column(Text)  # what reproduction generated
    passed: Mapped[bool | None] = mapped_column()
    score: Mapped[float | None] = mapped_column(Float)
    explanation: Mapped[str] = mapped_column(Text, default="")


class ReportReproduction(Base):
    """One reproduction of a report: what each of its inputs gave then, and the verdict
    (the variants hold only the newest outputs)."""

    __tablename__ = "report_reproductions"

    id: Mapped[int] = mapped_column(primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id"), index=True)
    rate: Mapped[float | None] = mapped_column(Float)  # share of checked inputs failing
    # [{"position", "output", "passed", "explanation"}], in the order of the variants
    outputs: Mapped[list[Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ReportEvent(Base):
    """Every change of a report's state: who, when, from, to, why."""

    __tablename__ = "report_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id"), index=True)
    actor: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(30))  # filed, status, confirmation, refiled
    from_status: Mapped[str] = mapped_column(String(20), default="")
    to_status: Mapped[str] = mapped_column(String(20), default="")
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ReportFiling(Base):
    """Each time someone filed this report's content (the first filing included)."""

    __tablename__ = "report_filings"

    id: Mapped[int] = mapped_column(primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id"), index=True)
    reporter: Mapped[str] = mapped_column(String(100))
    source: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ReportConfirmation(Base):
    """A person vouching that a report is a real failure (three make it confirmed)."""

    __tablename__ = "report_confirmations"
    __table_args__ = (UniqueConstraint("report_id", "user"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    report_id: Mapped[int] = mapped_column(ForeignKey("reports.id"), index=True)
    user: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Case(Base):
    """A test case: an input and a check. Its id is the hash of both, so it is immutable."""

    __tablename__ = "cases"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    messages: Mapped[list[Any]] = mapped_column(JSON)
    expected: Mapped[dict[str, Any]] = mapped_column(JSON)  # a check spec
    # sha256 of the normalised input alone: outputs are cached by it, so a new check on
    # the same input is scored without generating again
    input_hash: Mapped[str] = mapped_column(String(64), index=True)
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    report_id: Mapped[int | None] = mapped_column(ForeignKey("reports.id"), index=True)
    source: Mapped[str] = mapped_column(String(20), default="report")  # report, import, hand
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Suite(Base):
    """A named community benchmark; its content lives in frozen versions."""

    __tablename__ = "suites"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"), index=True)
    heldout_percent: Mapped[int] = mapped_column(Integer, default=30)
    # community: built by people; guard: the hub's general-behaviour suite of a model;
    # claims: the cases of the reports a contribution claims to fix (kept out of listings)
    kind: Mapped[str] = mapped_column(String(20), default="community", server_default="community")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    versions: Mapped[list[SuiteVersion]] = relationship(
        order_by="SuiteVersion.number", cascade="all, delete-orphan"
    )


class SuiteVersion(Base):
    """A frozen manifest of case ids; adding cases makes the next version."""

    __tablename__ = "suite_versions"
    __table_args__ = (UniqueConstraint("suite_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    suite_id: Mapped[int] = mapped_column(ForeignKey("suites.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    case_ids: Mapped[list[Any]] = mapped_column(JSON)
    manifest_hash: Mapped[str] = mapped_column(String(64))
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EvalOutput(Base):
    """A generated output, cached by (subject, input, generation settings)."""

    __tablename__ = "eval_outputs"

    subject_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    input_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    settings_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    output: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str] = mapped_column(Text, default="")
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    # generation stopped once the checks it was generated for had their verdict: `output`
    # is then a prefix of the full output, usable only by checks it decides
    # (checks.decided); a full output for the same key replaces it
    stopped: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EvalRun(Base):
    """A subject (revision + adapters) measured on a suite version with some settings."""

    __tablename__ = "eval_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    suite_version_id: Mapped[int] = mapped_column(ForeignKey("suite_versions.id"), index=True)
    revision_id: Mapped[int] = mapped_column(ForeignKey("revisions.id"), index=True)
    # {"revision": hash, "adapters": [{"path": ..., "sha256": ...}], "engine": ...}
    subject: Mapped[dict[str, Any]] = mapped_column(JSON)
    subject_hash: Mapped[str] = mapped_column(String(64), index=True)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    split: Mapped[str] = mapped_column(String(20), default="all")
    state: Mapped[str] = mapped_column(String(20), default="running")
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    generated: Mapped[int] = mapped_column(Integer, default=0)  # outputs not in the cache
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    results: Mapped[list[EvalResult]] = relationship(cascade="all, delete-orphan")


class EvalResult(Base):
    """One case's verdict in a run (scored from the cached output)."""

    __tablename__ = "eval_results"

    run_id: Mapped[int] = mapped_column(ForeignKey("eval_runs.id"), primary_key=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id"), primary_key=True)
    split: Mapped[str] = mapped_column(String(10))
    passed: Mapped[bool] = mapped_column()
    score: Mapped[float] = mapped_column(Float, default=0.0)
    explanation: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str] = mapped_column(Text, default="")


class Contribution(Base):
    """A model pull request: an adapter or a training dataset against one revision."""

    __tablename__ = "contributions"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    revision_id: Mapped[int] = mapped_column(ForeignKey("revisions.id"), index=True)
    author: Mapped[str] = mapped_column(String(100), index=True)
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    kind: Mapped[str] = mapped_column(String(20))  # adapter, dataset
    fixes: Mapped[list[Any]] = mapped_column(JSON, default=list)  # report ids it claims to fix
    recipe: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # training overrides
    # open → checking → passed | failed → approved → merged; or rejected / closed
    state: Mapped[str] = mapped_column(String(20), default="open", index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    model: Mapped[Model] = relationship()
    revision: Mapped[Revision] = relationship()
    pushes: Mapped[list[ContributionPush]] = relationship(
        order_by="ContributionPush.number", cascade="all, delete-orphan"
    )
    events: Mapped[list[ContributionEvent]] = relationship(
        order_by="ContributionEvent.id", cascade="all, delete-orphan"
    )


class ContributionPush(Base):
    """One version of a contribution's content, with its checks and verdict."""

    __tablename__ = "contribution_pushes"
    __table_args__ = (UniqueConstraint("contribution_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    contribution_id: Mapped[int] = mapped_column(ForeignKey("contributions.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    # what was pushed, file name → {sha256, size}: the adapter's files or the dataset
    files: Mapped[dict[str, Any]] = mapped_column(JSON)
    # the adapter evaluated: the pushed one, or the one trained from the dataset
    adapter: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    adapter_info: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    training: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # recipe, losses, seconds
    checks: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the check report
    verdict: Mapped[str] = mapped_column(String(20), default="")  # "", passed, failed
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ContributionEvent(Base):
    """Something that happened to a contribution: opened, pushed, checked, reviewed."""

    __tablename__ = "contribution_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    contribution_id: Mapped[int] = mapped_column(ForeignKey("contributions.id"), index=True)
    actor: Mapped[str] = mapped_column(String(100))
    # opened, pushed, checked, approved, rejected, closed, overridden
    kind: Mapped[str] = mapped_column(String(20))
    from_state: Mapped[str] = mapped_column(String(20), default="")
    to_state: Mapped[str] = mapped_column(String(20), default="")
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Release(Base):
    """A new revision merged from approved contributions, with its checks and its record."""

    __tablename__ = "releases"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    base_revision_id: Mapped[int] = mapped_column(ForeignKey("revisions.id"))
    revision_id: Mapped[int | None] = mapped_column(ForeignKey("revisions.id"))  # the merge
    method: Mapped[str] = mapped_column(String(20))  # linear, ties, dare_ties, retrain
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # weights, density, seed
    contributions: Mapped[list[Any]] = mapped_column(JSON)  # contribution ids, in order
    inputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # hashes merged
    versions: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # library versions
    # queued → merging → checking → released | candidate; or failed
    state: Mapped[str] = mapped_column(String(20), default="queued", index=True)
    tag: Mapped[str] = mapped_column(String(100), default="")  # v2, … once released
    checks: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the release report
    author: Mapped[str] = mapped_column(String(100))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    model: Mapped[Model] = relationship()
    base_revision: Mapped[Revision] = relationship(foreign_keys=[base_revision_id])
    revision: Mapped[Revision | None] = relationship(foreign_keys=[revision_id])


class CreditEntry(Base):
    """One line of the credits ledger: who made a release better, how, and the points."""

    __tablename__ = "credits"

    id: Mapped[int] = mapped_column(primary_key=True)
    release_id: Mapped[int] = mapped_column(ForeignKey("releases.id"), index=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    user: Mapped[str] = mapped_column(String(100), index=True)
    # reporter (confirmed report), fixed (their report fixed), confirmer, contributor,
    # reviewer; the points per role are in docs/credits.md
    role: Mapped[str] = mapped_column(String(30))
    points: Mapped[float] = mapped_column(Float)
    subject: Mapped[str] = mapped_column(String(60))  # "report:3", "contribution:2"
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class User(Base):
    """An account: a name people see (reporter, author, reviewer) and a global role."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(20))  # access.ROLES
    # the hub's owner: the account the CLI on the hub's machine acts as
    owner: Mapped[bool] = mapped_column(default=False, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    model_roles: Mapped[list[ModelRole]] = relationship(cascade="all, delete-orphan")


class ModelRole(Base):
    """A role a user holds on one model only (a maintainer of `smol`, say)."""

    __tablename__ = "model_roles"
    __table_args__ = (UniqueConstraint("user_id", "model_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    role: Mapped[str] = mapped_column(String(20))

    model: Mapped[Model] = relationship()


class HubSecret(Base):
    """A secret of this hub, made when its database is: `split` keys the held-out split."""

    __tablename__ = "hub_secrets"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[str] = mapped_column(String(100))


class ApiToken(Base):
    """An API token: only the sha256 of its secret is kept; the secret is shown once."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the secret
    last_chars: Mapped[str] = mapped_column(String(8))  # shown in listings: up_…wxyz
    scopes: Mapped[list[Any]] = mapped_column(JSON)  # access.SCOPES
    note: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # whether the traces of what it is served may become public reports, and their licence
    consent: Mapped[bool] = mapped_column(default=False, server_default="0")
    license: Mapped[str] = mapped_column(
        String(40), default="CC-BY-4.0", server_default="CC-BY-4.0"
    )

    user: Mapped[User] = relationship()


class WebSession(Base):
    """A signed-in browser: the cookie's secret is kept as its sha256, and the session acts
    through the API token it was opened with (revoking the token ends it)."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("api_tokens.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    token: Mapped[ApiToken] = relationship()


class Trace(Base):
    """A served response: what was asked and answered, by which revision, for whom.

    `attributes` holds the OpenTelemetry GenAI semantic-convention attributes of the call
    (`gen_ai.request.model`, `gen_ai.usage.output_tokens`, …), so a trace can be sent to
    any tool that reads them. `messages` and `output` are None when the hub keeps no
    prompts (setting trace_prompts).
    """

    __tablename__ = "traces"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # chatcmpl-…, the response id
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    revision_id: Mapped[int] = mapped_column(ForeignKey("revisions.id"), index=True)
    contribution_id: Mapped[int | None] = mapped_column(ForeignKey("contributions.id"))
    served_as: Mapped[str] = mapped_column(String(200))  # the model id the client asked for
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    token_id: Mapped[int | None] = mapped_column(ForeignKey("api_tokens.id"))
    consent: Mapped[bool] = mapped_column(default=False)  # may become a public report
    license: Mapped[str] = mapped_column(String(40), default="CC-BY-4.0")
    messages: Mapped[list[Any] | None] = mapped_column(JSON)
    output: Mapped[str | None] = mapped_column(Text)
    # {"max_tokens", "temperature", "top_p", "seed", "stop"}
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    finish_reason: Mapped[str] = mapped_column(String(20))
    prompt_tokens: Mapped[int] = mapped_column(default=0)
    completion_tokens: Mapped[int] = mapped_column(default=0)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, index=True
    )

    model: Mapped[Model] = relationship()
    revision: Mapped[Revision] = relationship()
    user: Mapped[User | None] = relationship()
    feedback: Mapped[list[Feedback]] = relationship(
        order_by="Feedback.id", cascade="all, delete-orphan", back_populates="trace"
    )


class Feedback(Base):
    """What a user said about a served response: a thumb, a score or a label, perhaps a
    comment and a correction. The same `feedback_id` for the same response updates it."""

    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("trace_id", "feedback_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    trace_id: Mapped[str] = mapped_column(ForeignKey("traces.id"), index=True)
    feedback_id: Mapped[str] = mapped_column(String(100))  # the client's, or made up
    name: Mapped[str] = mapped_column(String(100), default="thumbs")
    kind: Mapped[str] = mapped_column(String(10))  # thumb | score | label
    score: Mapped[float | None] = mapped_column(Float)  # thumb ±1, score 0..1
    label: Mapped[str | None] = mapped_column(String(100))
    negative: Mapped[bool] = mapped_column(default=False, index=True)
    comment: Mapped[str] = mapped_column(Text, default="")
    correction: Mapped[str | None] = mapped_column(Text)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    report_id: Mapped[int | None] = mapped_column(ForeignKey("reports.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    trace: Mapped[Trace] = relationship(back_populates="feedback")
