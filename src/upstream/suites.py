"""Community benchmarks: cases, suites, frozen versions and the public/held-out split.

A case is an input and a check; its id is the sha256 of both, so a case never changes.
A suite version is a frozen list of case ids; adding cases makes the next version, and
every result names the version it was measured on. Each case is `public` or `heldout`
by a stable rule on its id (`heldout_percent`, 30 by default): held-out inputs and
outputs are shown to maintainers only, so contributors cannot fit the test.

Cases come from confirmed reports (`build`: the prompt and every variant of each
confirmed report with a tag), from JSONL files or Hugging Face dataset directories
(`import`), or by hand.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from upstream.access import Actor, may, require
from upstream.checks import parse_check
from upstream.db.schema import Case, HubSecret, Model, Report, Suite, SuiteVersion
from upstream.errors import InvalidInput, NotFound
from upstream.registry import NAME_RE, get_model
from upstream.shapes import Shape

if TYPE_CHECKING:
    from upstream.hub import Hub

SPLITS = ("public", "heldout", "all")
CASE_SCHEMA = 1


def input_hash(messages: list[dict[str, str]]) -> str:
    """The identity of an input: what outputs are cached by."""
    canonical = json.dumps([[m["role"], m["content"]] for m in messages])
    return hashlib.sha256(canonical.encode()).hexdigest()


def case_id(messages: list[dict[str, str]], expected: dict[str, Any]) -> str:
    """Case id = sha256 of (input, check)."""
    canonical = json.dumps({"input": input_hash(messages), "check": expected}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def split_of(key: str, heldout_percent: int, secret: str = "") -> str:
    """`heldout` for a stable `heldout_percent` share of split keys, else `public`.

    Keyed by the hub's `secret` (an HMAC), so that which reports are held out cannot be
    worked out from their public ids; an empty secret is the unkeyed rule of hubs whose
    suites predate it."""
    if secret:
        digest = hmac.new(secret.encode(), f"split:{key}".encode(), hashlib.sha256).hexdigest()
    else:
        digest = hashlib.sha256(f"split:{key}".encode()).hexdigest()
    bucket = int(digest[:8], 16) % 100
    return "heldout" if bucket < heldout_percent else "public"


def split_secret(session: Session) -> str:
    """The hub's secret the held-out split is keyed by (made with its database)."""
    found = session.get(HubSecret, "split")
    return found.value if found else ""


def split_key(report_id: int | None, input: str) -> str:
    """What the split is decided on: the source report, else the input.

    All variants of one report, and one input under different checks, land on the same
    side, so a public case never gives away a held-out one.
    """
    return f"report:{report_id}" if report_id is not None else f"input:{input}"


def case_split(case: Case, heldout_percent: int, secret: str) -> str:
    return split_of(split_key(case.report_id, case.input_hash), heldout_percent, secret)


@dataclass
class CaseIn:
    messages: list[dict[str, str]]
    expected: dict[str, Any]
    tags: list[str]
    report_id: int | None = None
    source: str = "import"


def make_case(session: Session, c: CaseIn) -> Case:
    """The stored case for this input and check (created if new)."""
    cid = case_id(c.messages, c.expected)
    existing = session.get(Case, cid)
    if existing is not None:
        return existing
    case = Case(
        id=cid,
        messages=c.messages,
        expected=c.expected,
        input_hash=input_hash(c.messages),
        tags=sorted(set(c.tags)),
        report_id=c.report_id,
        source=c.source,
    )
    session.add(case)
    return case


# ---------------------------------------------------------------- suites and versions


def get_suite(session: Session, name: str) -> Suite:
    suite = session.scalar(select(Suite).where(Suite.name == name))
    if suite is None:
        names = session.scalars(select(Suite.name).order_by(Suite.name)).all()
        known = ", ".join(names) or "none yet; make one with `upstream suites build` or `import`"
        raise NotFound(f"unknown suite {name!r}; suites in this hub: {known}")
    return suite


def get_version(session: Session, name: str, number: int | None = None) -> SuiteVersion:
    """A suite's version `number`, or its newest."""
    suite = get_suite(session, name)
    if not suite.versions:
        raise InvalidInput(f"suite {name} has no cases yet")
    if number is None:
        return suite.versions[-1]
    for v in suite.versions:
        if v.number == number:
            return v
    raise NotFound(
        f"suite {name} has no version {number}; versions: "
        f"{', '.join(str(v.number) for v in suite.versions)}"
    )


def add_cases(
    hub: Hub,
    name: str,
    cases: Sequence[CaseIn],
    model: str | None = None,
    heldout_percent: int | None = None,
    note: str = "",
    kind: str = "community",
    exact: bool = False,
) -> dict[str, Any]:
    """Add cases to a suite (created if needed); makes a new version when any is new.

    With `exact` the new version holds exactly `cases` (a hub-owned suite such as the
    guard, replacing its set), made only when that differs from the newest version.
    """
    # Two writers adding to one suite at once both pick the next version number; the
    # unique (suite, number) refuses the second, which then retries on the new state.
    for attempt in range(3):
        try:
            return _add_cases_once(hub, name, cases, model, heldout_percent, note, kind, exact)
        except IntegrityError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _add_cases_once(
    hub: Hub,
    name: str,
    cases: Sequence[CaseIn],
    model: str | None = None,
    heldout_percent: int | None = None,
    note: str = "",
    kind: str = "community",
    exact: bool = False,
) -> dict[str, Any]:
    """One attempt of `add_cases`."""
    if not NAME_RE.match(name):
        raise InvalidInput(f"suite name {name!r}: use lowercase letters, digits, '.', '_', '-'")
    if not cases:
        raise InvalidInput(f"suite {name}: no cases given; a suite needs at least one")
    if heldout_percent is not None and not 0 <= heldout_percent <= 90:
        raise InvalidInput(f"heldout percent {heldout_percent}: allowed 0 to 90")
    with hub.session() as s, s.begin():
        suite = s.scalar(select(Suite).where(Suite.name == name))
        if suite is None:
            model_id = None
            if model:
                model_id = get_model(s, model.partition("@")[0]).id
            suite = Suite(
                name=name,
                model_id=model_id,
                heldout_percent=30 if heldout_percent is None else heldout_percent,
                kind=kind,
            )
            s.add(suite)
            s.flush()
        elif heldout_percent is not None and heldout_percent != suite.heldout_percent:
            raise InvalidInput(
                f"suite {name} holds out {suite.heldout_percent}%; the split "
                "of a suite cannot change, or old results would mislead"
            )
        current = list(suite.versions[-1].case_ids) if suite.versions else []
        seen = set() if exact else set(current)
        added = []
        for c in cases:
            case = make_case(s, c)
            if case.id not in seen:
                seen.add(case.id)
                added.append(case.id)
        ids = added if exact else current + added
        if ids == current:
            number = suite.versions[-1].number if suite.versions else 0
            return {"suite": name, "version": number, "added": 0, "cases": len(current)}
        before = set(current)
        added = [i for i in ids if i not in before]
        number = (suite.versions[-1].number if suite.versions else 0) + 1
        manifest = hashlib.sha256(json.dumps(ids).encode()).hexdigest()
        s.add(
            SuiteVersion(
                suite_id=suite.id, number=number, case_ids=ids, manifest_hash=manifest, note=note
            )
        )
        return {"suite": name, "version": number, "added": len(added), "cases": len(ids)}


def import_cases(
    hub: Hub,
    actor: Actor,
    name: str,
    cases: Sequence[CaseIn],
    model: str | None = None,
    heldout_percent: int | None = None,
    note: str = "",
) -> dict[str, Any]:
    """Add cases from a file to a suite (a maintainer of its model): `add_cases`."""
    _require_builder(hub, actor, name, model)
    for c in cases:
        c.source = "import"
    return add_cases(hub, name, cases, model, heldout_percent, note)


def _require_builder(hub: Hub, actor: Actor, name: str, model: str | None) -> None:
    """Suites are built by a maintainer of their model (of the hub, for a suite of none)."""
    with hub.session() as s:
        suite = s.scalar(select(Suite).where(Suite.name == name))
        found = s.get(Model, suite.model_id) if suite is not None and suite.model_id else None
        owner_model = found.name if found else None
    require(actor, "suites.build", owner_model or (model or "").partition("@")[0] or None)


def build_from_reports(
    hub: Hub,
    actor: Actor,
    name: str,
    tag: str,
    model: str | None = None,
    heldout_percent: int | None = None,
) -> dict[str, Any]:
    """Collect the confirmed reports with `tag`: each prompt and variant becomes a case."""
    _require_builder(hub, actor, name, model)
    with hub.session() as s:
        q = select(Report).where(Report.status == "confirmed").order_by(Report.id)
        if model:
            q = q.join(Model, Report.model_id == Model.id).where(
                Model.name == model.partition("@")[0]
            )
        reports = [r for r in s.scalars(q) if tag.lower() in r.tags]
        cases = []
        for r in reports:
            for v in r.variants:
                check = v.expected or r.expected
                if check is None:
                    continue  # nothing to score: a report without a check
                cases.append(CaseIn(v.messages, check, [*r.tags], r.id, "report"))
        model_name = model or (reports[0].model.name if reports else None)
    if not cases:
        raise InvalidInput(
            f"no confirmed report with tag {tag!r} and a check"
            + (f" for model {model}" if model else "")
            + "; confirm some with `upstream reports confirm`"
        )
    result = add_cases(
        hub,
        name,
        cases,
        model_name,
        heldout_percent,
        note=f"built from confirmed reports tagged {tag}",
    )
    return {**result, "reports": len(reports)}


# ---------------------------------------------------------------- import


def parse_case_line(data: Any, where: str, max_chars: int) -> CaseIn:
    """One JSONL case: {"prompt" or "messages", "expected": check, "tags"}."""
    if not isinstance(data, dict):
        raise InvalidInput(f"{where}: a case must be a JSON object")
    unknown = sorted(
        set(data) - {"prompt", "messages", "expected", "tags", "id", "split", "schema"}
    )
    if unknown:
        raise InvalidInput(
            f"{where}.{unknown[0]}: unknown field (allowed: prompt, messages, expected, tags)"
        )
    if ("prompt" in data) == ("messages" in data):
        raise InvalidInput(f"{where}: give exactly one of prompt or messages")
    if "prompt" in data:
        if not isinstance(data["prompt"], str) or not data["prompt"].strip():
            raise InvalidInput(f"{where}.prompt: a non-empty string is needed")
        messages = [{"role": "user", "content": data["prompt"]}]
    else:
        messages = data["messages"]
        if not isinstance(messages, list) or not all(
            isinstance(m, dict)
            and m.get("role") in ("system", "user", "assistant")
            and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise InvalidInput(f"{where}.messages: a list of {{role, content}} is needed")
        if not any(m["role"] == "user" and m["content"].strip() for m in messages):
            raise InvalidInput(f"{where}.messages: a non-empty user message is needed")
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    if sum(len(m["content"]) for m in messages) > max_chars:
        raise InvalidInput(f"{where}.prompt: longer than {max_chars} characters")
    if "expected" not in data:
        raise InvalidInput(f"{where}.expected: a check is needed to score the case")
    parse_check(data["expected"], f"{where}.expected")
    tags = data.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise InvalidInput(f"{where}.tags: a list of strings is needed")
    return CaseIn(messages, data["expected"], [t.lower() for t in tags])


def read_cases(path: Path, max_chars: int) -> list[CaseIn]:
    """Cases from a JSONL file or a Hugging Face datasets directory; all valid or none."""
    if path.is_dir():
        rows = _hf_rows(path)
    elif path.is_file():
        rows = []
        for n, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
            if not raw.strip():
                continue
            try:
                rows.append((f"line {n}", json.loads(raw.decode("utf-8"))))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                rows.append((f"line {n}", _Bad(f"not UTF-8 JSON: {e}")))
    else:
        raise NotFound(f"{path}: no such file or directory")
    cases, errors = [], []
    for where, data in rows:
        if isinstance(data, _Bad):
            errors.append(f"{where}: {data.reason}")
            continue
        if isinstance(data, dict) and isinstance(data.get("expected"), str):
            data = {**data, "expected": json.loads(data["expected"])}  # HF rows store JSON text
        try:
            cases.append(parse_case_line(data, where, max_chars))
        except InvalidInput as e:
            errors.append(str(e))
    if errors:
        raise InvalidInput(f"{len(errors)} invalid case(s), nothing imported: " + "; ".join(errors))
    if not cases:
        raise InvalidInput(f"{path}: no cases in it")
    return cases


@dataclass
class _Bad:
    reason: str


def _hf_rows(path: Path) -> list[tuple[str, Any]]:
    from datasets import Dataset, DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise InvalidInput(f"{path}: not a Hugging Face datasets directory: {e}") from e
    if isinstance(ds, DatasetDict):
        ds = ds[next(iter(ds))]
    assert isinstance(ds, Dataset)
    return [(f"row {i}", dict(row)) for i, row in enumerate(ds)]


# ---------------------------------------------------------------- reading


def version_cases(session: Session, version: SuiteVersion) -> list[Case]:
    """The cases of a version, in manifest order."""
    ids = list(version.case_ids)
    found: dict[str, Case] = {}
    for start in range(0, len(ids), 500):
        for c in session.scalars(select(Case).where(Case.id.in_(ids[start : start + 500]))):
            found[c.id] = c
    return [found[i] for i in ids]


class AddedOut(Shape):
    """The answer to adding cases to a suite (importing them or building from reports)."""

    suite: str
    version: int = Field(description="its newest version (unchanged when nothing was new)")
    added: int = Field(description="cases new to the suite")
    cases: int = Field(description="cases in that version")
    reports: int | None = Field(None, description="built from reports: how many were used")


class VersionOut(Shape):
    number: int
    cases: int
    note: str
    created_at: str


class SuiteSummary(Shape):
    """A suite as lists show it: `suites list --json` and `GET /api/suites`."""

    name: str
    model: str | None = Field(description="the model it is for; null: any")
    version: int = Field(description="its newest version; 0 before any")
    cases: int
    public: int
    heldout: int
    heldout_percent: int
    kind: str = Field(description="community or guard")
    versions: list[VersionOut]


class SuiteList(Shape):
    suites: list[SuiteSummary]


class CaseOut(Shape):
    id: str
    split: str = Field(description="public or heldout")
    tags: list[str]
    report: int | None = Field(description="the report it was built from")
    prompt: str = Field(description="the last user turn")
    messages: list[dict[str, str]]
    expected: dict[str, Any] = Field(description="its check")


class HiddenCase(Shape):
    """A held-out case as someone who may not see held-out cases is shown it."""

    split: str
    hidden: bool


class SuiteView(SuiteSummary):
    """A suite version's cases: `suites show --json` and `GET /api/suites/{name}`."""

    shown_version: int
    case_list: list[CaseOut | HiddenCase]


def suite_summary(session: Session, suite: Suite) -> dict[str, Any]:
    latest = suite.versions[-1] if suite.versions else None
    cases = version_cases(session, latest) if latest else []
    secret = split_secret(session)
    splits = [case_split(c, suite.heldout_percent, secret) for c in cases]
    model = session.get(Model, suite.model_id) if suite.model_id else None
    return {
        "name": suite.name,
        "model": model.name if model else None,
        "version": latest.number if latest else 0,
        "cases": len(cases),
        "public": splits.count("public"),
        "heldout": splits.count("heldout"),
        "heldout_percent": suite.heldout_percent,
        "kind": suite.kind,
        "versions": [
            {
                "number": v.number,
                "cases": len(v.case_ids),
                "note": v.note,
                "created_at": v.created_at.isoformat(),
            }
            for v in suite.versions
        ],
    }


def may_see_heldout(session: Session, suite: Suite, viewer: Actor) -> bool:
    """Whether `viewer` may see `suite`'s held-out cases: a maintainer of the suite's
    model (of the hub, for a suite of no model), as exports and every page decide it."""
    model = session.get(Model, suite.model_id) if suite.model_id else None
    return may(viewer, "suites.heldout", model.name if model else None)


def withheld_cases(session: Session, cases: Sequence[Case]) -> set[str]:
    """The ids of `cases` shown only to those who may see held-out cases: a case held out
    in any suite is held out everywhere (its id names the same input in each), and a case
    built from a report filed without consent is not shared (as exports withhold it)."""
    ids = {c.id for c in cases}
    secret = split_secret(session)
    withheld: set[str] = set()
    for suite in session.scalars(select(Suite).where(Suite.heldout_percent > 0)):
        inside = {i for v in suite.versions for i in v.case_ids if i in ids}
        withheld |= {
            c.id
            for c in cases
            if c.id in inside and case_split(c, suite.heldout_percent, secret) == "heldout"
        }
    report_ids = {c.report_id for c in cases if c.report_id is not None}
    private = set(
        session.scalars(
            select(Report.id).where(Report.id.in_(report_ids), Report.consent.is_(False))
        )
    )
    return withheld | {c.id for c in cases if c.report_id in private}


def suite_view(session: Session, name: str, version: int | None, viewer: Actor) -> dict[str, Any]:
    """A suite version and its cases as `viewer` may see them (held-out contents only for
    those the access rules let see them)."""
    suite = get_suite(session, name)
    see = may_see_heldout(session, suite, viewer)
    v = get_version(session, name, version)
    secret = split_secret(session)
    cases = version_cases(session, v)
    hidden = set() if see else withheld_cases(session, cases)
    shown = [
        case_view(c, case_split(c, suite.heldout_percent, secret), see, c.id in hidden)
        for c in cases
    ]
    return {**suite_summary(session, suite), "shown_version": v.number, "case_list": shown}


def case_view(
    case: Case, split: str, can_see_heldout: bool, withheld: bool = False
) -> dict[str, Any]:
    """A case as shown to a viewer: held-out (and `withheld`) contents only for
    maintainers."""
    if (split == "heldout" or withheld) and not can_see_heldout:
        return {"split": split, "hidden": True}  # not even its id, tags or report
    base = {"id": case.id, "split": split, "tags": case.tags, "report": case.report_id}
    prompt = next((m["content"] for m in reversed(case.messages) if m["role"] == "user"), "")
    return {**base, "prompt": prompt, "messages": case.messages, "expected": case.expected}


def list_suites(session: Session, model_id: int | None = None) -> list[Suite]:
    """The community and guard suites (a contribution's claims suite is its own business)."""
    q = select(Suite).where(Suite.kind != "claims").order_by(Suite.name)
    if model_id is not None:
        q = q.where(Suite.model_id == model_id)
    return list(session.scalars(q))
