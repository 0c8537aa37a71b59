"""The review, release, model, triage and account commands as a script drives them: `--json`.

Each command runs once as a real process, on a hub prepared in-process (the tiny model,
adapters, a report, the accounts acting with `--as`) and closed before the first command
starts; without `--as` a command acts as the hub's owner. Its stdout must parse
as one JSON document holding the ids and states the command made; a few also run
without `--json` to show that a person gets words, not JSON. The audit at the end
checks that every command printing results accepts `--json` (DESIGN.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.people import owner, person
from tests.test_cli import all_commands, upstream
from tests.test_contributions import NEVER, make_adapter
from upstream import accounts
from upstream import contributions as prs
from upstream.credits import CONTRIBUTOR_PER_CASE, POINTS
from upstream.errors import Unauthorized
from upstream.hub import Hub
from upstream.registry import import_model, materialize, resolve, tags_of
from upstream.reports import parse_report, submit_one

# Random tiny adapters fix nothing; with this policy their checks (and a release of
# them) still pass, so each command's outcome is one known state.
LENIENT = "policy_min_fixed = 0\npolicy_regression_p = 1e-9\npolicy_margin = 0.99\n"


def run_json(home: Path, *args: str) -> Any:
    """Run `upstream ARGS --json`; it must succeed and print exactly one JSON document."""
    out = upstream(home, *args, "--json")
    assert out.returncode == 0, (args, out.stderr)
    return json.loads(out.stdout)


def human(home: Path, *args: str) -> str:
    """Run `upstream ARGS` for a person: it succeeds and its stdout is not JSON."""
    out = upstream(home, *args)
    assert out.returncode == 0, (args, out.stderr)
    with pytest.raises(json.JSONDecodeError):
        json.loads(out.stdout)
    return out.stdout


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A hub home whose config.toml the in-process hub and every subprocess read."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(LENIENT)
    return home


@pytest.fixture
def prepared(home: Path, tiny_model_dir: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The tiny model and three adapter contributions by bo, none checked yet."""
    hub = Hub.open(home)
    try:
        base = import_model(hub, str(tiny_model_dir), "tiny").revision
        with hub.session() as s:
            base_dir = materialize(hub, resolve(s, "tiny"))
        first = make_adapter(base_dir, tmp_path / "a0", seed=0)
        second = make_adapter(base_dir, tmp_path / "a1", seed=1)
        bo = person(hub, "bo")
        ids = [  # each with its checks queued, for a worker that is not running
            prs.open_contribution(
                hub, prs.ContributionIn("tiny", title, prs.Content(adapter_dir=first)), bo
            )["id"]
            for title in ("to release", "to reject", "to withdraw")
        ]
        maintainer = owner(hub).name
    finally:
        hub.close()
    yield {"base": base, "ids": ids, "maintainer": maintainer, "second_adapter": second}


def test_review_release_credits_and_model_commands(
    home: Path, prepared: dict[str, Any], tmp_path: Path
) -> None:
    base, maintainer = prepared["base"], prepared["maintainer"]
    kept, rejected, withdrawn = prepared["ids"]

    checked = run_json(home, "prs", "check", str(kept), "--as", "bo")
    assert (checked["id"], checked["push"], checked["state"]) == (kept, 1, "passed")
    assert checked["verdict"] == "passed" and checked["checks"]["passed"] is True
    assert isinstance(checked["job"], int)
    assert [(e["kind"], e["to"]) for e in checked["events"]][1:] == [
        ("checking", "checking"),
        ("checked", "passed"),
    ]
    assert [r["kind"] for r in checked["checks"]["suites"]] == ["guard"]

    approved = run_json(
        home, "prs", "approve", str(kept), "--comment", "thanks", "--as", maintainer
    )
    assert (approved["id"], approved["state"], approved["author"]) == (kept, "approved", "bo")

    refused = run_json(
        home, "prs", "reject", str(rejected), "--reason", "out of scope", "--as", maintainer
    )
    assert (refused["id"], refused["state"]) == (rejected, "rejected")

    pushed = run_json(
        home, "prs", "push", str(withdrawn), "--adapter", str(prepared["second_adapter"]),
        "--no-check", "--as", "bo",
    )  # fmt: skip
    assert (pushed["contribution"], pushed["push"], pushed["state"]) == (withdrawn, 2, "queued")
    assert isinstance(pushed["job"], int) and pushed["job"] != checked["job"]

    closed = run_json(home, "prs", "close", str(withdrawn), "--reason", "later", "--as", "bo")
    assert (closed["id"], closed["state"], closed["push"]) == (withdrawn, "closed", 2)

    released = run_json(home, "release", "tiny", "--from", str(kept), "--as", maintainer)
    assert (released["state"], released["tag"], released["method"]) == ("released", "v2", "linear")
    assert released["passed"] is True and released["contributions"] == [kept]
    assert isinstance(released["id"], int)
    revision = released["revision"]
    assert released["base"] == base and revision not in (None, base)

    credited = {r["user"]: r for r in run_json(home, "credits", "--model", "tiny")["credits"]}
    assert set(credited) == {"bo", maintainer}
    assert credited["bo"]["roles"] == {"contributor": 1} and credited["bo"]["releases"] == 1
    retained = released["retention"][str(kept)]["retained"]  # cases it fixed that stay fixed
    assert credited["bo"]["points"] == POINTS["contributor"] + CONTRIBUTOR_PER_CASE * retained
    assert credited[maintainer]["roles"] == {"reviewer": 1}  # the rejection was not merged
    table = human(home, "credits")
    assert "bo" in table and "1 contributor" in table and "1 reviewer" in table

    out = tmp_path / "export"
    exported = run_json(home, "models", "export", "tiny@v2", "--out", str(out))
    assert exported["model"] == "tiny" and exported["revision"] == revision
    assert exported["out"] == str(out)
    assert {"config.json", "model.safetensors", "README.md"} <= set(exported["files"])
    assert sorted(p.name for p in out.iterdir()) == sorted(exported["files"])
    assert (out / "README.md").read_text().startswith("---\n")  # the release's model card

    tagged = run_json(home, "models", "tag", "tiny@v2", "stable")
    assert tagged == {"model": "tiny", "tag": "stable", "revision": revision}
    assert f"tiny@old -> {base[:12]}" in human(home, "models", "tag", f"tiny@{base[:8]}", "old")
    untagged = run_json(home, "models", "untag", "tiny", "stable")
    assert untagged == {"model": "tiny", "tag": "stable", "removed": True}

    hub = Hub.open(home)
    try:
        with hub.session() as s:
            new, old = resolve(s, "tiny"), resolve(s, "tiny@old")
            assert (new.hash, old.hash) == (revision, base)
            assert tags_of(new.model, new) == ["latest", "v2"]  # stable is gone
            states = {i: prs.get_contribution(s, i).state for i in prepared["ids"]}
        assert states == {kept: "merged", rejected: "rejected", withdrawn: "closed"}
    finally:
        hub.close()


def test_report_reproduce_rescore_and_close(home: Path, tiny_model_dir: Path) -> None:
    hub = Hub.open(home)
    try:
        import_model(hub, str(tiny_model_dir), "tiny")
        data = {"model": "tiny", "prompt": "Capital?", "expected": NEVER, "max_new_tokens": 4}
        filed = submit_one(hub, parse_report(data), person(hub, "ana", "reporter"), "cli")
        report_id = filed.filed[0].id
        person(hub, "bea", "reporter")
        person(hub, "mae", "maintainer", model="tiny")
    finally:
        hub.close()
    key = str(report_id)  # JSON object keys are strings

    reproduced = run_json(home, "reports", "reproduce", key)["reproduction"]["reports"]
    assert list(reproduced) == [key]
    assert reproduced[key] == {
        "status": "reproduced",
        "result": "reproduced",
        "rate": 1.0,
        "failing": 1,
        "checked": 1,
    }

    lenient = json.dumps({"type": "max_words", "value": 100})  # 4 tokens are fewer words
    by_reporter = upstream(home, "reports", "rescore", key, "--expect", lenient, "--as", "ana")
    assert by_reporter.returncode == 2
    assert "only a maintainer of tiny may rescore reports" in by_reporter.stderr
    rescored = run_json(home, "reports", "rescore", key, "--expect", lenient, "--as", "mae")
    assert rescored["reproduction"]["reports"][key] == {
        "status": "not_reproduced",
        "result": "not_reproduced",
        "rate": 0.0,
        "failing": 0,
        "checked": 1,
    }

    not_hers = upstream(home, "reports", "close", key, "--reason", "spam", "--as", "bea")
    assert not_hers.returncode == 2 and "may close reports" in not_hers.stderr
    closed = run_json(home, "reports", "close", key, "--reason", "not a bug", "--as", "ana")
    assert (closed["id"], closed["status"]) == (report_id, "wontfix")
    assert closed["message"] == "closed as wontfix"
    shown = run_json(home, "reports", "show", key)
    assert shown["status"] == "wontfix" and shown["expected"] == json.loads(lenient)


def test_users_and_tokens_from_the_command_line(home: Path) -> None:
    added = run_json(home, "users", "add", "cy", "--role", "contributor")
    assert (added["name"], added["role"], added["owner"]) == ("cy", "contributor", False)
    run_json(home, "users", "add", "rea", "--role", "reporter")
    users = {u["name"]: u for u in run_json(home, "users", "list")["users"]}
    [owner_name] = [n for n, u in users.items() if u["owner"]]  # made by the first command
    assert {n: u["role"] for n, u in users.items()} == {
        owner_name: "admin",
        "cy": "contributor",
        "rea": "reporter",
    }
    table = human(home, "users", "list")
    assert "cy" in table and "contributor" in table and f"{owner_name} (owner)" in table
    again = upstream(home, "users", "add", "cy", "--role", "reporter")
    assert again.returncode == 2 and "user 'cy' exists" in again.stderr

    promoted = run_json(home, "users", "set-role", "cy", "--role", "maintainer")
    assert (promoted["name"], promoted["role"]) == ("cy", "maintainer")
    users = {u["name"]: u for u in run_json(home, "users", "list")["users"]}
    assert users["cy"]["role"] == "maintainer"
    no_role = upstream(home, "users", "set-role", "cy", "--role", "reviewer")
    assert no_role.returncode == 2 and "role 'reviewer'" in no_role.stderr

    made = run_json(home, "tokens", "create", "--user", "cy", "--note", "ci")
    secret = made["token"]
    assert secret.startswith("up_") and len(secret) > 40
    assert made["user"] == "cy" and made["revoked"] is False
    assert made["scopes"] == ["read", "report", "contribute", "review", "release"]  # the role's
    narrow = run_json(home, "tokens", "create", "--user", "cy", "--scope", "read")
    assert narrow["scopes"] == ["read"] and narrow["token"] != secret
    beyond = upstream(home, "tokens", "create", "--user", "rea", "--scope", "contribute")
    assert beyond.returncode == 2 and "beyond what rea may do" in beyond.stderr
    own = run_json(home, "tokens", "create", "--user", "rea", "--as", "rea")  # their own
    assert own["user"] == "rea" and own["scopes"] == ["read", "report"]

    listed = upstream(home, "tokens", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    tokens = json.loads(listed.stdout)["tokens"]
    assert [t["id"] for t in tokens] == [made["id"], narrow["id"], own["id"]]
    assert all("token" not in t for t in tokens)  # never the secret
    for text in (listed.stdout, human(home, "tokens", "list")):
        assert all(x not in text for x in (secret, narrow["token"], own["token"]))
    assert made["shown_as"] == f"up_…{secret[-4:]}" in human(home, "tokens", "list")
    mine = run_json(home, "tokens", "list", "--as", "rea")["tokens"]
    assert [t["id"] for t in mine] == [own["id"]]  # a user sees their own tokens only

    revoked = run_json(home, "tokens", "revoke", str(made["id"]))
    assert (revoked["id"], revoked["revoked"]) == (made["id"], True)
    states = {t["id"]: t["revoked"] for t in run_json(home, "tokens", "list")["tokens"]}
    assert states == {made["id"]: True, narrow["id"]: False, own["id"]: False}
    hub = Hub.open(home)
    try:
        with pytest.raises(Unauthorized, match="revoked"):
            accounts.authenticate(hub, secret)
        assert accounts.authenticate(hub, narrow["token"]).name == "cy"
    finally:
        hub.close()

    for args, message in [
        (("users", "add", "eve", "--role", "admin"), "may manage users"),
        (("users", "set-role", "rea", "--role", "admin"), "may manage users"),
        (("users", "list"), "may manage users"),
        (("tokens", "create", "--user", "cy"), "may manage others' tokens"),
        (("tokens", "revoke", str(narrow["id"])), "may manage others' tokens"),
    ]:
        refused = upstream(home, *args, "--as", "rea")
        assert refused.returncode == 2, (args, refused.stderr)
        assert message in refused.stderr and "Traceback" not in refused.stderr
    assert "eve" not in {u["name"] for u in run_json(home, "users", "list")["users"]}
    unknown = upstream(home, "users", "list", "--as", "nobody")
    assert unknown.returncode == 2 and "no user 'nobody'" in unknown.stderr


# ---------------------------------------------------------------- the --json audit

# Commands that print no results: a server and a job runner, both until stopped.
PRINT_NO_RESULTS = {("up",), ("worker",)}


def test_the_audit_sees_every_group() -> None:
    groups = {c[0] for c in all_commands() if len(c) > 1}
    assert groups >= {"models", "reports", "suites", "prs", "jobs"}
    assert set(all_commands()) >= PRINT_NO_RESULTS  # an exemption names a command that exists


@pytest.mark.parametrize(
    "command",
    [c for c in all_commands() if c not in PRINT_NO_RESULTS],
    ids=lambda c: " ".join(c),
)
def test_every_command_that_prints_results_accepts_json(command: tuple[str, ...]) -> None:
    from typer.testing import CliRunner

    from upstream.cli import app

    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "--json" in result.output
