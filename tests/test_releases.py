"""Releases on the tiny model: preflight refusals, a linear merge checked and exported."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.people import owner, person
from tests.test_contributions import make_adapter
from upstream import contributions as prs
from upstream import releases
from upstream.access import Actor
from upstream.errors import Conflict, Forbidden, InvalidInput
from upstream.hub import Hub
from upstream.registry import import_model, materialize, resolve


@pytest.fixture
def hub(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Hub]:
    # A lenient policy: these tests are of the merge mechanics (weights, tags, export,
    # retention, search), with random adapters that claim no report. The gate itself, under
    # the default policy, is tested in tests/test_release_gate.py.
    h = Hub.open(
        tmp_path / "home", policy_min_fixed=0, policy_regression_p=1e-9, policy_margin=0.99
    )
    import_model(h, str(tiny_model_dir), "tiny")
    yield h
    h.close()


@pytest.fixture
def maintainer(hub: Hub) -> Actor:
    return owner(hub)


def approved(hub: Hub, maintainer: Actor, adapter: Path, author: str = "bo") -> int:
    data = prs.ContributionIn("tiny", f"fix {adapter.name}", prs.Content(adapter_dir=adapter))
    opened = prs.open_contribution(hub, data, person(hub, author), attempts=1)
    hub.jobs.run_now(opened["job"])
    return prs.approve(hub, opened["id"], maintainer)["id"]  # refused unless its checks passed


@pytest.fixture
def two(hub: Hub, maintainer: Actor, tmp_path: Path) -> tuple[list[int], list[Path]]:
    with hub.session() as s:
        base = materialize(hub, resolve(s, "tiny"))
    dirs = [make_adapter(base, tmp_path / f"a{i}", seed=i) for i in range(2)]
    return [approved(hub, maintainer, d) for d in dirs], dirs


def test_a_linear_release_is_checked_tagged_credited_and_exported(
    hub: Hub, maintainer: Actor, two: tuple[list[int], list[Path]], tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    ids, dirs = two
    planned = releases.plan_release(
        hub, releases.ReleaseIn("tiny", ids, "linear", [0.7, 0.3]), maintainer
    )
    result = hub.jobs.run_now(releases.queue_release(hub, planned["id"]))
    assert result["state"] == "released" and result["tag"] == "v2", result["reasons"]
    # retention, recomputed from the stored checks: of the cases each fixed alone, those
    # the merged revision fixes too (all failed on the base)
    with hub.session() as s:
        checks = releases.get_release(s, planned["id"]).checks or {}
        merged_fixed = {i for r in checks["suites"] for i in r["splits"]["all"]["fixed"]}
        for cid in ids:
            own = prs.get_contribution(s, cid).pushes[-1].checks or {}
            alone = {i for r in own["suites"] for i in r["splits"]["all"]["fixed"]}
            kept = result["retention"][str(cid)]
            assert alone and kept["fixed_alone"] == len(alone)
            assert kept["retained"] == len(alone & merged_fixed) < len(alone)  # the merge costs
            line = (
                f"ℹ contribution #{cid} retains {kept['retained']} of the {len(alone)} cases "
                f"it fixed alone ({kept['retained'] / len(alone):.0%})"
            )
            assert line in result["reasons"]
    with hub.session() as s:
        latest = resolve(s, "tiny")
        assert latest.hash == result["revision"] and resolve(s, "tiny@v2").id == latest.id
        assert [p.parent_id for p in latest.parents] == [resolve(s, f"tiny@{result['base']}").id]
        assert all(prs.get_contribution(s, i).state == "merged" for i in ids)
        assert latest.card.startswith("---\n") and "model-index" in latest.card
    assert result["versions"]["torch"] and result["inputs"]["base"] == result["base"]

    with pytest.raises(Forbidden, match="only a maintainer of tiny may export revisions"):
        releases.export_revision(hub, person(hub, "bo"), "tiny@v2", tmp_path / "export")
    out = releases.export_revision(hub, maintainer, "tiny@v2", tmp_path / "export")
    export = Path(out["out"])
    assert (export / "README.md").read_text().startswith("---\n")
    merged = AutoModelForCausalLM.from_pretrained(export, local_files_only=True)
    base = AutoModelForCausalLM.from_pretrained(
        materialize(hub, _base(hub, result["base"])), local_files_only=True
    )
    expected = {k: v.clone() for k, v in base.state_dict().items()}
    for weight, d in zip([0.7, 0.3], dirs, strict=True):
        lora = load_file(d / "adapter_model.safetensors")
        for key, a in lora.items():
            if ".lora_A." not in key:
                continue
            b = lora[key.replace(".lora_A.", ".lora_B.")]
            target = key.split("base_model.model.", 1)[1].split(".lora_A.")[0] + ".weight"
            expected[target] += weight * (b @ a) * (8 / 4)  # alpha / r
    got = merged.state_dict()
    worst = max(float((got[k] - expected[k]).abs().max()) for k in expected)
    assert worst < 1e-5
    assert any(not torch.equal(got[k], base.state_dict()[k]) for k in expected)

    from upstream.credits import credits_table

    with hub.session() as s:
        table = {r["user"]: r for r in credits_table(s, "tiny")}
    assert "contributor" in table["bo"]["roles"] and "reviewer" in table[maintainer.name]["roles"]


def _base(hub: Hub, rev: str):  # type: ignore[no-untyped-def]
    with hub.session() as s:
        return resolve(s, f"tiny@{rev}")


def test_preflight_refuses_before_any_merge(
    hub: Hub,
    maintainer: Actor,
    two: tuple[list[int], list[Path]],
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    ids, dirs = two
    plan = releases.plan_release
    with pytest.raises(Forbidden, match="only a maintainer"):
        plan(hub, releases.ReleaseIn("tiny", ids), person(hub, "bo"))
    with pytest.raises(InvalidInput, match="allowed linear, ties, dare_ties, retrain"):
        plan(hub, releases.ReleaseIn("tiny", ids, "average"), maintainer)
    with pytest.raises(InvalidInput, match="weight"):
        plan(hub, releases.ReleaseIn("tiny", ids, "linear", [1.0]), maintainer)
    with pytest.raises(Conflict, match="retrain needs datasets"):
        plan(hub, releases.ReleaseIn("tiny", ids, "retrain"), maintainer)

    rejected = approved(hub, maintainer, dirs[0])
    with hub.session() as s, s.begin():
        prs.get_contribution(s, rejected).state = "rejected"
    with pytest.raises(Conflict, match=rf"#{rejected} is rejected, not approved"):
        plan(hub, releases.ReleaseIn("tiny", [*ids, rejected]), maintainer)

    with hub.session() as s:
        sha = (
            prs.get_contribution(s, ids[0])
            .pushes[-1]
            .adapter["adapter_model.safetensors"]["sha256"]
        )
    blob = hub.blobs.path(sha)
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(InvalidInput, match="corrupt"):
        plan(hub, releases.ReleaseIn("tiny", ids), maintainer)

    from tests.tiny_models import build_model

    import_model(hub, str(build_model(tmp_path / "tiny2", "llama", seed=1)), "tiny")
    with hub.session() as s:
        newer = materialize(hub, resolve(s, "tiny"))
    other_base = approved(hub, maintainer, make_adapter(newer, tmp_path / "b", seed=3))
    with pytest.raises(Conflict, match="different base revisions"):
        plan(hub, releases.ReleaseIn("tiny", [ids[0], other_base]), maintainer)
    with pytest.raises(Conflict, match="contributions must be made against the latest"):
        plan(hub, releases.ReleaseIn("tiny", [ids[1]]), maintainer)

    with hub.session() as s:
        assert s.query(releases.Release).count() == 0  # nothing recorded, nothing merged


def test_retrain_trains_one_adapter_on_every_dataset(hub: Hub, maintainer: Actor) -> None:
    from tests.test_contributions import DATASET

    ids = []
    for title in ("greetings", "colours"):
        data = prs.ContributionIn(
            "tiny", title, prs.Content(dataset=DATASET), recipe={"epochs": 1, "rank": 2}
        )
        opened = prs.open_contribution(hub, data, person(hub, "bo"), attempts=1)
        cid = opened["id"]
        hub.jobs.run_now(opened["job"])
        with hub.session() as s:
            failed = prs.get_contribution(s, cid).state == "failed"
        prs.approve(hub, cid, maintainer, override="test" if failed else "")
        ids.append(cid)
    planned = releases.plan_release(hub, releases.ReleaseIn("tiny", ids, "retrain"), maintainer)
    assert planned["params"] == {"method": "retrain", "seed": 0}
    result = hub.jobs.run_now(releases.queue_release(hub, planned["id"]))
    assert result["state"] == "released" and result["method"] == "retrain"
    assert set(result["inputs"]["datasets"]) == {str(i) for i in ids}
    assert result["params"]["merge"]["changed"] > 0  # the retrained adapter was merged


def test_search_builds_every_candidate_and_ships_only_the_chosen(
    hub: Hub, maintainer: Actor, two: tuple[list[int], list[Path]]
) -> None:
    ids, _ = two
    with hub.session() as s:
        before = resolve(s, "tiny").hash
    with pytest.raises(Forbidden, match="only a maintainer"):
        releases.search_release(
            hub, "tiny", ids, person(hub, "bo"), dry_run=True, methods=["linear"]
        )
    with pytest.raises(InvalidInput, match="no candidate left"):
        releases.search_release(hub, "tiny", ids, maintainer, methods=["retrain"])

    dry = releases.search_release(
        hub, "tiny", ids, maintainer, dry_run=True, methods=["linear", "ties"]
    )
    labels = [c["candidate"] for c in dry["candidates"]]
    assert labels == ["linear", "linear weights 0.75,0.75", "ties density 0.8", "ties density 0.5"]
    assert all(c["state"] == "candidate" and c["tag"] == "" for c in dry["candidates"])
    assert dry["release"] is None and dry["chosen"] is not None
    assert len({c["revision"] for c in dry["candidates"]}) == 4  # four different merges
    with hub.session() as s:
        assert resolve(s, "tiny").hash == before  # a dry run moves nothing
        assert all(prs.get_contribution(s, i).state == "approved" for i in ids)

    with pytest.raises(Forbidden):
        releases.ship_release(hub, dry["chosen"], person(hub, "bo"))
    with pytest.raises(InvalidInput, match="is a release of tiny, not other"):
        releases.ship_release(hub, dry["chosen"], maintainer, "other")
    shipped = releases.ship_release(hub, dry["chosen"], maintainer)
    assert shipped["state"] == "released" and shipped["tag"] == "v2"
    with hub.session() as s:
        assert resolve(s, "tiny").hash == shipped["revision"] != before
        assert all(prs.get_contribution(s, i).state == "merged" for i in ids)
    with pytest.raises(Conflict, match="is released"):
        releases.ship_release(hub, dry["chosen"], maintainer)
    # a sibling candidate that passed can no longer ship: its contributions are merged
    # and the model's latest revision is not its base any more
    sibling = next(c for c in dry["candidates"] if c["id"] != dry["chosen"] and c["passed"])
    with pytest.raises(Conflict, match="is merged since the release was planned"):
        releases.ship_release(hub, sibling["id"], maintainer)


def test_search_ships_the_passing_candidate_with_the_best_retention(
    hub: Hub, maintainer: Actor, two: tuple[list[int], list[Path]]
) -> None:
    ids, _ = two
    result = releases.search_release(hub, "tiny", ids, maintainer, methods=["linear"])
    passing = [c for c in result["candidates"] if c["passed"]]
    assert passing, [c["reasons"] for c in result["candidates"]]
    best = max(passing, key=releases._search_key)
    assert result["chosen"] == best["id"]
    assert result["release"]["id"] == best["id"] and result["release"]["state"] == "released"
    others = [c for c in result["candidates"] if c["id"] != best["id"]]
    with hub.session() as s:
        assert all(releases.get_release(s, c["id"]).state == "candidate" for c in others)
        assert resolve(s, "tiny").hash == result["release"]["revision"]


def test_the_search_space_and_its_order() -> None:
    labels = [c.label for c in releases.search_space(1, all_datasets=True)]
    assert labels == ["linear", "linear weights 0.75"]  # nothing to resolve between deltas
    two = [c.label for c in releases.search_space(2, all_datasets=False)]
    assert two == [
        "linear",
        "linear weights 0.75,0.75",
        "ties density 0.8",
        "ties density 0.5",
        "dare_ties density 0.5",
    ]
    assert [c.label for c in releases.search_space(2, all_datasets=True)] == [*two, "retrain"]


def test_the_best_candidate_keeps_its_worst_fix_best() -> None:
    def summary(retention: list[float | None], broken: int) -> dict:
        return {
            "retention": {str(i): {"retention": r} for i, r in enumerate(retention)},
            "figures": {"broken": broken},
        }

    even, lopsided = summary([0.8, 0.8], 5), summary([0.5, 1.0], 0)
    assert max([lopsided, even], key=releases._search_key) is even  # worst kept 80 % > 50 %
    mean_wins = summary([0.8, 1.0], 9)
    assert max([even, mean_wins], key=releases._search_key) is mean_wins
    fewer_broken = summary([0.8, 0.8], 1)
    assert max([even, fewer_broken], key=releases._search_key) is fewer_broken
    nothing_fixed = summary([None, None], 0)  # no fix alone to lose: counts as kept
    assert releases._search_key(nothing_fixed)[:2] == (1.0, 1.0)


def test_release_search_and_ship_from_the_command_line(
    hub: Hub, two: tuple[list[int], list[Path]]
) -> None:
    from tests.test_cli import upstream

    home = hub.settings.home  # the subprocess reads the fixture's lenient policy from here
    (home / "config.toml").write_text(
        "policy_min_fixed = 0\npolicy_regression_p = 1e-9\npolicy_margin = 0.99\n"
    )
    ids = ",".join(map(str, two[0]))
    wrong = upstream(home, "release", "tiny", "--from", ids, "--dry-run")
    assert (
        wrong.returncode == 2 and "--dry-run and --methods apply to --search only" in wrong.stderr
    )
    dry = upstream(
        home, "release", "tiny", "--from", ids, "--search", "--dry-run", "--methods", "linear",
        "--json",
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    result = json.loads(dry.stdout)
    assert [c["candidate"] for c in result["candidates"]] == ["linear", "linear weights 0.75,0.75"]
    assert result["release"] is None and result["chosen"] in [c["id"] for c in result["candidates"]]
    assert all(
        set(c["figures"]) >= {"fixed", "broken", "guard_broken"} for c in result["candidates"]
    )
    both = upstream(home, "release", "tiny", "--ship", str(result["chosen"]), "--from", ids)
    assert both.returncode == 2 and "--ship ships a candidate" in both.stderr
    shipped = upstream(home, "release", "tiny", "--ship", str(result["chosen"]), "--json")
    assert shipped.returncode == 0, shipped.stderr
    assert json.loads(shipped.stdout)["tag"] == "v2"
    human = upstream(home, "models", "show", "tiny", "--json")
    assert json.loads(human.stdout)["tags"] == ["latest", "v2"]
