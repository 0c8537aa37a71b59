"""Feedback on served responses, and how it becomes reports and training data.

    served response ──▶ POST /v1/feedback {response_id, feedback_id?, value, comment?, correction?}
        value +1 / -1: a thumb · 0..1: a score · text: a label
        negative (thumb -1, score < 0.5, or a label with a correction)
            ──▶ a report, filed the way every report is (duplicates, clusters,
                reproduction) with the exact messages, output, length and revision:
                with a correction its check is `exact` (short) or `similar` to it,
                without one it waits for `upstream reports expect ID --check JSON`
        positive ──▶ kept as signal (feedback stats)

Who may: the user whose token was served (`access`: feedback.give, as owner), a
maintainer of the model, or whoever holds the response's **feedback token**: an HMAC
of the response id and an expiry under a secret of the hub, good for feedback on that
one response for `feedback_token_minutes`, so a browser can send it without the app's
API key. A forged, altered or expired one is refused (401).

The same `feedback_id` on the same response updates the feedback, never adds one; the
report it filed stays its report. Corrections leave as the chat JSONL a dataset
contribution takes, or as prompt/chosen/rejected pairs for preference training, each
line with the trace's consent and licence (`export`, `contribute`).
"""

from __future__ import annotations

import json
import math
import secrets
from collections import defaultdict
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from upstream.access import Actor, may, require
from upstream.contributions import Content, ContributionIn, open_contribution
from upstream.db.schema import Feedback, Model, Report, Revision, Trace, utcnow
from upstream.errors import InvalidInput, NotFound
from upstream.hub import Hub
from upstream.registry import resolve
from upstream.reports import ReportIn, clusters, file_for_feedback, prompt_text
from upstream.serving import owner_name
from upstream.shapes import Shape
from upstream.stats import wilson

EXACT_WORDS = 3  # a correction this short becomes an `exact` check, a longer one `similar`
SIMILAR_THRESHOLD = 0.8
FORMATS = ("chat", "preference")


# ---------------------------------------------------------------- giving feedback


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    response_id: str = Field(max_length=40, description="the `id` of the chat completion")
    feedback_id: str | None = Field(
        None, min_length=1, max_length=100, description="yours: the same id again updates"
    )
    name: str = Field("thumbs", min_length=1, max_length=100, description="what is rated")
    value: StrictInt | StrictFloat | StrictStr = Field(
        description="+1 or -1 (a thumb), a score from 0 to 1, or a label (1-100 characters)"
    )
    comment: str = Field("", max_length=10_000)
    correction: str | None = Field(
        None, max_length=32_000, description="what the answer should have been"
    )


class FeedbackOut(Shape):
    id: int
    feedback_id: str
    response_id: str
    kind: str = Field(description="thumb, score or label")
    negative: bool
    created: bool = Field(description="false: an earlier post with this feedback_id updated")
    report_id: int | None = Field(description="the report this feedback filed, if any")
    reproduction_job: int | None = Field(description="the job reproducing that report")


def read_value(
    value: int | float | str, correction: str | None
) -> tuple[str, float | None, str | None, bool]:
    """(kind, score, label, negative) of a feedback value, or InvalidInput."""
    if isinstance(value, str):
        label = value.strip()
        if not label or len(label) > 100:
            raise InvalidInput("value: a label is 1 to 100 characters", field="value")
        return "label", None, label, correction is not None
    number = float(value)
    if number in (1.0, -1.0):
        return "thumb", number, None, number < 0
    if math.isfinite(number) and 0.0 <= number <= 1.0:
        return "score", number, None, number < 0.5
    raise InvalidInput(
        f"value {value!r}: +1 or -1 (a thumb), a score from 0 to 1, or a label", field="value"
    )


def check_for(correction: str) -> dict[str, Any]:
    """The check a correction gives a report: `exact` when short, else `similar`."""
    text = correction.strip()
    if len(text.split()) <= EXACT_WORDS:
        return {"type": "exact", "value": text}
    return {"type": "similar", "value": text, "threshold": SIMILAR_THRESHOLD}


def give(hub: Hub, actor: Actor, body: FeedbackIn) -> dict[str, Any]:
    """Store feedback on a response (or update it: the same feedback_id); negative
    feedback files a report, once."""
    with hub.session() as s:
        trace = s.get(Trace, body.response_id)
        if trace is None:
            raise NotFound(
                f"no response {body.response_id} (or it is older than trace_retention_days)",
                field="response_id",
            )
        model, owner = trace.model.name, owner_name(trace)
    require(actor, "feedback.give", model, owner, target=f"response:{body.response_id}")
    if body.correction is not None and not body.correction.strip():
        raise InvalidInput("correction: empty; leave it out or give the answer", "correction")
    kind, score, label, negative = read_value(body.value, body.correction)
    feedback_id = body.feedback_id or "fb-" + secrets.token_hex(8)
    row_id, created, report_id = _store(hub, actor, body, feedback_id, kind, score, label, negative)
    job = None
    if negative and report_id is None:
        report_id, job = _file_report(hub, body.response_id, body.comment)
        if report_id is not None:
            with hub.session() as s, s.begin():
                row = s.get(Feedback, row_id)
                assert row is not None
                row.report_id = row.report_id or report_id
                report_id = row.report_id
    return {
        "id": row_id,
        "feedback_id": feedback_id,
        "response_id": body.response_id,
        "kind": kind,
        "negative": negative,
        "created": created,
        "report_id": report_id,
        "reproduction_job": job,
    }


def _store(
    hub: Hub,
    actor: Actor,
    body: FeedbackIn,
    feedback_id: str,
    kind: str,
    score: float | None,
    label: str | None,
    negative: bool,
) -> tuple[int, bool, int | None]:
    """Insert or update the feedback row; (id, created, its report). Two posts of one
    feedback_id at once: the unique key refuses the second, which then updates."""
    for attempt in range(3):
        try:
            with hub.session() as s, s.begin():
                row = s.scalars(
                    select(Feedback).where(
                        Feedback.trace_id == body.response_id, Feedback.feedback_id == feedback_id
                    )
                ).first()
                created = row is None
                if row is None:
                    row = Feedback(trace_id=body.response_id, feedback_id=feedback_id)
                    s.add(row)
                row.name, row.kind, row.score, row.label = body.name, kind, score, label
                row.negative, row.comment, row.correction = negative, body.comment, body.correction
                row.user_id = actor.user_id
                row.updated_at = utcnow()
                s.flush()
                return row.id, created, row.report_id
        except IntegrityError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _file_report(hub: Hub, response_id: str, comment: str) -> tuple[int | None, int | None]:
    """File the report of negative feedback on a response; (report, reproduction job).
    A trace without its messages (trace_prompts off) cannot become a runnable report."""
    with hub.session() as s:
        trace = s.get(Trace, response_id)
        assert trace is not None
        if trace.messages is None:
            return None, None
        correction = next(
            (f.correction for f in reversed(trace.feedback) if f.negative and f.correction), None
        )
        settings = trace.settings
        notes = [f"thumbs-down on {response_id}"] + ([comment] if comment else [])
        if settings.get("temperature") or settings.get("stop"):
            notes.append(
                "served with "
                + ", ".join(
                    f"{k}={settings[k]!r}"
                    for k in ("temperature", "top_p", "seed", "stop")
                    if settings.get(k)
                )
                + "; reproduced greedily without stop strings"
            )
        item = ReportIn(
            model=f"{trace.model.name}@{trace.revision.hash}",
            messages=trace.messages,
            observed=trace.output,
            expected=check_for(correction) if correction else None,
            tags=["feedback"] + ([f"pr-{trace.contribution_id}"] if trace.contribution_id else []),
            description="\n".join(notes)[:10_000],
            max_new_tokens=int(settings.get("max_tokens", 256)),
            license=trace.license,
            consent=trace.consent,
        )
        reporter = Actor(
            owner_name(trace), "reporter", frozenset({"report"}), user_id=trace.user_id
        )
    submission = file_for_feedback(hub, item, reporter)
    filed = submission.filed[0]
    return filed.id, submission.job


# ---------------------------------------------------------------- reading it


class FeedbackRow(Shape):
    id: int
    feedback_id: str
    response_id: str
    model: str = Field(description="name@revision that answered")
    contribution: int | None
    name: str
    kind: str
    score: float | None
    label: str | None
    negative: bool
    comment: str
    correction: str | None
    prompt: str | None = Field(description="the user's turns (null when prompts are not kept)")
    output: str | None
    report_id: int | None
    consent: bool
    license: str
    created_at: str
    updated_at: str


class FeedbackList(Shape):
    feedback: list[FeedbackRow]


class RevisionStats(Shape):
    model: str
    revision: str
    responses: int = Field(description="traces kept for this revision")
    feedback: int
    thumbs: int = Field(description="thumb ratings")
    thumbs_down: int
    thumbs_down_rate: float | None
    interval: tuple[float, float] = Field(description="Wilson 95 % interval of that rate")
    corrections: int
    clusters: list[dict[str, Any]] = Field(description="negative feedback's reports, clustered")


class FeedbackStats(Shape):
    revisions: list[RevisionStats]


def _readable(session: Session, actor: Actor, model: str | None) -> list[int]:
    """Model ids whose feedback `actor` may read (refusing a named model they may not)."""
    if model is not None:
        revision = resolve(session, model)
        require(actor, "feedback.read", revision.model.name)
        return [revision.model_id]
    return [m.id for m in session.scalars(select(Model)) if may(actor, "feedback.read", m.name)]


def _query(session: Session, actor: Actor, model: str | None) -> Any:
    q = (
        select(Feedback)
        .join(Trace)
        .where(Trace.model_id.in_(_readable(session, actor, model)))
        .options(selectinload(Feedback.trace).selectinload(Trace.revision))
        .order_by(Feedback.id.desc())
    )
    if model is not None and "@" in model:
        q = q.where(Trace.revision_id == resolve(session, model).id)
    return q


def list_feedback(
    hub: Hub, actor: Actor, model: str | None = None, negative: bool | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Recent feedback (newest first) on the models `actor` may read it of."""
    if not 1 <= limit <= 10_000:
        raise InvalidInput(f"limit {limit}: allowed 1 to 10000")
    with hub.session() as s:
        q = _query(s, actor, model)
        if negative is not None:
            q = q.where(Feedback.negative.is_(negative))
        return [_row(f) for f in s.scalars(q.limit(limit))]


def _row(f: Feedback) -> dict[str, Any]:
    t = f.trace
    return {
        "id": f.id,
        "feedback_id": f.feedback_id,
        "response_id": t.id,
        "model": f"{t.model.name}@{t.revision.hash[:12]}",
        "contribution": t.contribution_id,
        "name": f.name,
        "kind": f.kind,
        "score": f.score,
        "label": f.label,
        "negative": f.negative,
        "comment": f.comment,
        "correction": f.correction,
        "prompt": prompt_text(t.messages) if t.messages is not None else None,
        "output": t.output,
        "report_id": f.report_id,
        "consent": t.consent,
        "license": t.license,
        "created_at": f.created_at.isoformat(),
        "updated_at": f.updated_at.isoformat(),
    }


def stats(hub: Hub, actor: Actor, model: str | None = None) -> list[dict[str, Any]]:
    """Per revision: responses, feedback, thumbs-down rate with its interval, corrections,
    and the clusters of the reports negative feedback filed."""
    with hub.session() as s:
        rows = list(s.scalars(_query(s, actor, model)))
        models = _readable(s, actor, model)
        served = dict(
            s.execute(
                select(Trace.revision_id, func.count())
                .where(Trace.model_id.in_(models))
                .group_by(Trace.revision_id)
            ).all()
        )
        by_revision: dict[int, list[Feedback]] = defaultdict(list)
        for f in rows:
            by_revision[f.trace.revision_id].append(f)
        out = []
        for revision_id in sorted(set(served) | set(by_revision)):
            revision = s.get(Revision, revision_id)
            assert revision is not None
            mine = by_revision.get(revision_id, [])
            thumbs = [f for f in mine if f.kind == "thumb"]
            down = sum(f.negative for f in thumbs)
            report_ids = sorted({f.report_id for f in mine if f.report_id is not None})
            reports = list(s.scalars(select(Report).where(Report.id.in_(report_ids))))
            out.append(
                {
                    "model": revision.model.name,
                    "revision": revision.hash[:12],
                    "responses": int(served.get(revision_id, 0)),
                    "feedback": len(mine),
                    "thumbs": len(thumbs),
                    "thumbs_down": down,
                    "thumbs_down_rate": down / len(thumbs) if thumbs else None,
                    "interval": wilson(down, len(thumbs)),
                    "corrections": sum(f.correction is not None for f in mine),
                    "clusters": clusters(reports)[:5],
                }
            )
        return out


# ---------------------------------------------------------------- feedback to data


def export(
    hub: Hub,
    actor: Actor,
    fmt: Literal["chat", "preference"] | str,
    model: str | None = None,
    ids: list[int] | None = None,
) -> list[dict[str, Any]]:
    """Negative feedback with corrections as training lines: `chat` (the conversation
    ending in the correction, the JSONL a dataset contribution takes) or `preference`
    (prompt, chosen = the correction, rejected = the served answer). Each line carries
    its trace's consent and licence in `metadata`."""
    if fmt not in FORMATS:
        raise InvalidInput(f"format {fmt!r}: allowed {', '.join(FORMATS)}", field="format")
    with hub.session() as s:
        q = _query(s, actor, model).where(Feedback.negative.is_(True))
        q = q.where(Feedback.correction.is_not(None))
        if ids:
            q = q.where(Feedback.id.in_(ids))
        found = list(s.scalars(q))
        if ids:
            missing = sorted(set(ids) - {f.id for f in found})
            if missing:
                raise NotFound(
                    f"feedback {', '.join(map(str, missing))}: not negative feedback with a "
                    "correction that you may read"
                )
        lines = []
        seen: set[str] = set()
        for f in sorted(found, key=lambda f: f.id):
            t = f.trace
            if t.messages is None or t.id in seen:  # one line per response: its latest word
                continue
            seen.add(t.id)
            answer = {"role": "assistant", "content": (f.correction or "").strip()}
            metadata = {
                "response_id": t.id,
                "feedback": f.id,
                "report_id": f.report_id,
                "revision": f"{t.model.name}@{t.revision.hash[:12]}",
                "consent": t.consent,
                "license": t.license,
            }
            if fmt == "chat":
                lines.append({"messages": [*t.messages, answer], "metadata": metadata})
            else:
                lines.append(
                    {
                        "prompt": t.messages,
                        "chosen": [answer],
                        "rejected": [{"role": "assistant", "content": t.output or ""}],
                        "metadata": metadata,
                    }
                )
        return lines


def contribute(
    hub: Hub,
    actor: Actor,
    model: str,
    title: str,
    ids: list[int] | None = None,
    recipe: dict[str, Any] | None = None,
    description: str = "",
    fixes: list[int] | None = None,
    attempts: int = 3,
) -> dict[str, Any]:
    """Open a dataset contribution to `model` (NAME@REV) from corrections: the chat
    export of the chosen feedback (all with corrections on that revision by default),
    claiming to fix the reports that feedback filed."""
    lines = export(hub, actor, "chat", model, ids)
    if not lines:
        raise InvalidInput(
            f"no negative feedback with a correction on {model} to train on"
            + (" among those chosen" if ids else "")
        )
    data = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()
    filed = {int(m["report_id"]) for m in (ln["metadata"] for ln in lines) if m["report_id"]}
    claimed = sorted(filed | set(fixes or []))
    content = Content(dataset=data, dataset_name="feedback.jsonl")
    opened = open_contribution(
        hub,
        ContributionIn(model, title, content, claimed, dict(recipe or {}), description),
        actor,
        attempts,
    )
    return {**opened, "examples": len(lines), "fixes": claimed}
