"""/api/releases and /api/credits over real HTTP, after a release that shipped."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.people import owner, person
from tests.test_contributions import make_adapter
from upstream import contributions as prs
from upstream import releases
from upstream.hub import Hub
from upstream.registry import materialize, resolve


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    """The lenient policy of tests/test_releases.py: a random adapter's release ships.

    What is tested here is what the routes show; the gate is tests/test_release_gate.py.
    """
    h = Hub.open(
        tmp_path / "home", policy_min_fixed=0, policy_regression_p=1e-9, policy_margin=0.99
    )
    yield h
    h.close()


def test_releases_and_credits_are_readable(server: str, tiny_hub: Hub, tmp_path: Path) -> None:
    maintainer = owner(tiny_hub)
    with tiny_hub.session() as s:
        adapter = make_adapter(materialize(tiny_hub, resolve(s, "tiny")), tmp_path / "a")
    data = prs.ContributionIn("tiny", "a fix", prs.Content(adapter_dir=adapter))
    opened = prs.open_contribution(tiny_hub, data, person(tiny_hub, "bo"), attempts=1)
    cid = opened["id"]
    tiny_hub.jobs.run_now(opened["job"])
    prs.approve(tiny_hub, cid, maintainer)  # refused unless its checks passed
    planned = releases.plan_release(tiny_hub, releases.ReleaseIn("tiny", [cid]), maintainer)
    built = tiny_hub.jobs.run_now(releases.queue_release(tiny_hub, planned["id"]))
    assert (built["state"], built["tag"]) == ("released", "v2"), built["reasons"]

    listed = httpx.get(f"{server}/api/releases", params={"model": "tiny"}).json()["releases"]
    assert [(r["id"], r["state"], r["tag"]) for r in listed] == [(planned["id"], "released", "v2")]
    one = httpx.get(f"{server}/api/releases/{planned['id']}").json()
    assert one["reasons"] == built["reasons"] and one["contributions"] == [cid]
    assert {(e["user"], e["role"]) for e in one["credits"]} == {
        ("bo", "contributor"),
        (maintainer.name, "reviewer"),
    }
    credits = httpx.get(f"{server}/api/credits", params={"model": "tiny"}).json()["credits"]
    assert {c["user"]: c["roles"] for c in credits} == {
        "bo": {"contributor": 1},
        maintainer.name: {"reviewer": 1},
    }
    assert httpx.get(f"{server}/api/releases/99").status_code == 404
    assert httpx.get(f"{server}/api/credits", params={"model": "nope"}).status_code == 404
