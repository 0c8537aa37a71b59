"""Who may do what: the one rule book every write of the hub is checked against.

An actor is a user (or nobody: anonymous) acting through a token or the CLI. A user has
a global role and may hold a higher role on single models:

    reporter < contributor < maintainer < admin

Each role allows a set of scopes; a token carries its own scopes, and what a token may
do is its scopes ∩ its user's role on the model at hand, so a token can only narrow
what its user may do. The CLI on the hub's own machine acts as the owner (an admin)
without a token: whoever can run it can read the hub's files anyway.

Every domain function that changes something calls `require(actor, ACTION, ...)` before
it does; the CLI, the API and the pages only pass the actor along. An action not in
`RULES` is a bug, not a permission: `require` raises KeyError for it, and a test
checks every route and command against this table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from upstream.errors import Forbidden, InvalidInput, Unauthorized

ROLES = ("reporter", "contributor", "maintainer", "admin")
SCOPES = ("read", "report", "contribute", "review", "release", "admin")
# What each role allows; a higher role allows everything a lower one does.
ROLE_SCOPES: dict[str, frozenset[str]] = {
    "reporter": frozenset({"read", "report"}),
    "contributor": frozenset({"read", "report", "contribute"}),
    "maintainer": frozenset({"read", "report", "contribute", "review", "release"}),
    "admin": frozenset(SCOPES),
}
ANONYMOUS_NAME = "anonymous"


class Rule(NamedTuple):
    """Who may take an action: a role (on the object's model) and a token scope.

    `or_owner` lets the object's owner (a report's reporter, a contribution's author)
    act with that lesser scope whatever their role; `not_owner` refuses the owner even
    when their role allows it (nobody approves their own work).
    """

    role: str
    scope: str
    what: str  # said in the refusal: "only a maintainer may {what}"
    or_owner: str | None = None
    not_owner: bool = False
    own: str = "their own work"  # what the owner is refused, with not_owner


RULES: dict[str, Rule] = {
    # reports
    "reports.file": Rule("reporter", "report", "file reports"),
    "reports.confirm": Rule(
        "reporter", "report", "confirm reports", not_owner=True, own="their own report"
    ),
    "reports.triage": Rule("maintainer", "review", "confirm reports directly"),
    "reports.close": Rule("maintainer", "review", "close reports", or_owner="report"),
    "reports.reproduce": Rule("maintainer", "review", "reproduce reports again"),
    "reports.rescore": Rule("maintainer", "review", "rescore reports"),
    "reports.expect": Rule("maintainer", "review", "give reports a check", or_owner="report"),
    # suites and measurements
    "suites.build": Rule("maintainer", "review", "build or import suites"),
    "suites.heldout": Rule("maintainer", "review", "see held-out cases"),
    "evals.run": Rule("contributor", "contribute", "run evaluations"),
    # contributions
    "contributions.open": Rule("contributor", "contribute", "open contributions"),
    "contributions.push": Rule("admin", "admin", "push to others' contributions", "contribute"),
    "contributions.check": Rule("maintainer", "review", "re-run checks", or_owner="contribute"),
    "contributions.approve": Rule("maintainer", "review", "approve", not_owner=True),
    "contributions.reject": Rule("maintainer", "review", "reject"),
    "contributions.close": Rule("maintainer", "review", "close", or_owner="contribute"),
    # models and releases
    "models.import": Rule("admin", "admin", "import models"),
    "models.tag": Rule("maintainer", "release", "move tags"),
    "models.export": Rule("maintainer", "release", "export revisions"),
    "releases.cut": Rule("maintainer", "release", "cut releases"),
    # serving and feedback (a served response's owner is the user whose token asked)
    "models.serve": Rule("reporter", "read", "use the served models"),
    "feedback.give": Rule("maintainer", "review", "give feedback on others' responses", "read"),
    "feedback.read": Rule("maintainer", "review", "read traces and feedback"),
    # the hub itself
    "jobs.cancel": Rule("maintainer", "review", "cancel jobs", or_owner="read"),
    "users.manage": Rule("admin", "admin", "manage users"),
    "tokens.manage": Rule("admin", "admin", "manage others' tokens", or_owner="read"),
}


@dataclass(frozen=True)
class Actor:
    """Who is acting: a user's name and roles, and the scopes of the token they use.

    `scopes` None means no token narrows the role (the CLI). `model_roles` maps a model
    name to the role held on it, when it is higher than `role`.
    """

    name: str
    role: str | None  # None: anonymous
    scopes: frozenset[str] | None = None
    model_roles: Mapping[str, str] = field(default_factory=dict)
    user_id: int | None = None
    token_id: int | None = None  # the API token acting, if one is
    # A feedback token stands for the user its response was served to, bound to that one
    # response: it may only give feedback on it ("response:chatcmpl-…").
    bound_to: str | None = None

    @property
    def anonymous(self) -> bool:
        return self.role is None

    def role_on(self, model: str | None) -> str | None:
        """The highest role this actor holds on `model` (its global one without a model)."""
        held = [r for r in (self.role, self.model_roles.get(model or "")) if r]
        return max(held, key=ROLES.index) if held else None

    def has(self, scope: str, model: str | None = None) -> bool:
        """Whether both the role on `model` and the token allow `scope`."""
        role = self.role_on(model)
        if role is None:
            return scope == "read"
        return scope in ROLE_SCOPES[role] and (self.scopes is None or scope in self.scopes)


ANONYMOUS = Actor(ANONYMOUS_NAME, None, frozenset({"read"}))
# The hub's own work (a CI run, a release's checks): sees and may do everything, and is
# never an interface's actor.
HUB = Actor("upstream", "admin")


def may(
    actor: Actor,
    action: str,
    model: str | None = None,
    owner: str | None = None,
    target: str | None = None,
) -> bool:
    """Whether `actor` may take `action` on an object of `model` owned by `owner`;
    `target` names the object for an actor bound to one (a feedback token)."""
    rule = RULES[action]
    if actor.bound_to is not None and (action != "feedback.give" or target != actor.bound_to):
        return False
    is_owner = owner is not None and not actor.anonymous and actor.name == owner
    if rule.not_owner and is_owner:
        return False
    if is_owner and rule.or_owner and actor.has(rule.or_owner, model):
        return True
    role = actor.role_on(model)
    allowed_role = role is not None and ROLES.index(role) >= ROLES.index(rule.role)
    return allowed_role and actor.has(rule.scope, model)


def require(
    actor: Actor,
    action: str,
    model: str | None = None,
    owner: str | None = None,
    target: str | None = None,
) -> None:
    """Refuse, naming who may, unless `actor` may take `action` (see `may`)."""
    if may(actor, action, model, owner, target):
        return
    rule = RULES[action]
    if actor.bound_to is not None:
        raise Forbidden(f"this feedback token is good for feedback on {actor.bound_to} only")
    if actor.anonymous:
        raise Unauthorized(f"sign in to {rule.what}: send `Authorization: Bearer <token>`")
    if rule.not_owner and owner == actor.name:
        verb = rule.what.split(" ", 1)[0]
        raise Forbidden(f"{actor.name} may not {verb} {rule.own}")
    role = actor.role_on(model)
    where = f" of {model}" if model else ""
    if role is not None and ROLES.index(role) >= ROLES.index(rule.role):
        raise Forbidden(
            f"this token of {actor.name} lacks the {rule.scope!r} scope needed to {rule.what}"
        )
    article = "an" if rule.role[0] in "aeiou" else "a"
    who = f"{article} {rule.role}{where}" + (" or its owner" if rule.or_owner else "")
    raise Forbidden(f"only {who} may {rule.what} ({actor.name} is a {role})")


def check_role(role: str) -> str:
    """`role`, if it is one of ROLES; else InvalidInput naming them."""
    if role not in ROLES:
        raise InvalidInput(f"role {role!r}: allowed {', '.join(ROLES)}")
    return role
