"""Suite exports: JSONL and HF round trips, and lm-eval scoring the export as Upstream does."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.people import owner, person
from upstream import suites
from upstream.checks import parse_check
from upstream.db.schema import EvalRun
from upstream.engines.base import GenResult
from upstream.errors import Forbidden, InvalidInput, NotFound
from upstream.evals import run_eval
from upstream.exports import export_suite, task_name
from upstream.hub import Hub

NEVER = {"type": "exact", "value": "this exact sentence will not be generated"}
ALWAYS = {"type": "max_words", "value": 10_000}
MAX_NEW_TOKENS = 8  # short replies keep the lm-eval run fast; one reply ends at EOS


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def some_cases(n: int) -> list[suites.CaseIn]:
    return [
        suites.CaseIn(user(f"question number {i}"), NEVER if i % 2 else ALWAYS, ["t", f"g{i % 3}"])
        for i in range(n)
    ]


def ids_by_split(hub: Hub, name: str) -> dict[str, list[str]]:
    with hub.session() as s:
        cases = suites.version_cases(s, suites.get_version(s, name))
        secret = suites.split_secret(s)
    out: dict[str, list[str]] = {"public": [], "heldout": []}
    for c in cases:
        out[suites.case_split(c, 30, secret)].append(c.id)
    return out


def reimport(hub: Hub, path: Path, name: str) -> list[str]:
    cases = suites.read_cases(path, hub.settings.max_prompt_chars)
    suites.add_cases(hub, name, cases, heldout_percent=0)
    with hub.session() as s:
        return list(suites.get_version(s, name).case_ids)


def test_jsonl_exports_public_cases_and_imports_back(hub: Hub, tmp_path: Path) -> None:
    suites.add_cases(hub, "s", some_cases(20))
    split = ids_by_split(hub, "s")
    assert split["public"] and split["heldout"]

    result = export_suite(hub, owner(hub), "s", "jsonl", tmp_path / "out")
    assert result["files"] == ["cases.jsonl", "suite.json"]
    assert (result["suite"], result["version"], result["format"]) == ("s", 1, "jsonl")
    assert result["cases"] == len(split["public"])
    lines = [json.loads(x) for x in (tmp_path / "out" / "cases.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == split["public"]  # manifest order, held-out stay home
    assert set(lines[0]) == {"schema", "id", "messages", "expected", "tags", "split"}
    assert {x["split"] for x in lines} == {"public"} and lines[0]["schema"] == 1
    info = json.loads((tmp_path / "out" / "suite.json").read_text())
    with hub.session() as s:
        assert info["manifest_hash"] == suites.get_version(s, "s").manifest_hash
    assert info["counts"]["withheld"] == {"heldout": len(split["heldout"])}
    assert info["counts"]["version_cases"] == 20 and info["schema"] == 1
    assert info["exported_at"]

    assert reimport(hub, tmp_path / "out" / "cases.jsonl", "copy") == split["public"]

    everything = export_suite(hub, owner(hub), "s", "jsonl", tmp_path / "all", include_heldout=True)
    assert everything["splits"] == {
        "public": len(split["public"]),
        "heldout": len(split["heldout"]),
    }
    with hub.session() as s:
        manifest = list(suites.get_version(s, "s").case_ids)
    assert reimport(hub, tmp_path / "all" / "cases.jsonl", "copy-all") == manifest

    # held-out cases are a maintainer's to export; anyone may export the public ones
    bo = person(hub, "bo")
    with pytest.raises(Forbidden, match="only a maintainer may see held-out cases"):
        export_suite(hub, bo, "s", "jsonl", tmp_path / "bo-all", include_heldout=True)
    assert not (tmp_path / "bo-all").exists()
    assert export_suite(hub, bo, "s", "jsonl", tmp_path / "bo")["cases"] == len(split["public"])


def test_export_refuses_bad_requests_and_leaves_nothing_behind(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from upstream import exports

    tmp_path = tmp_path / "exports"
    tmp_path.mkdir()
    suites.add_cases(hub, "s", some_cases(6))
    with pytest.raises(InvalidInput, match="allowed formats are jsonl, hf, lm-eval"):
        export_suite(hub, owner(hub), "s", "csv", tmp_path / "a")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    with pytest.raises(InvalidInput, match="not an empty directory"):
        export_suite(hub, owner(hub), "s", "jsonl", tmp_path / "full")
    with pytest.raises(NotFound, match="unknown suite 'nope'"):
        export_suite(hub, owner(hub), "nope", "jsonl", tmp_path / "b")
    with pytest.raises(NotFound, match="no version 7"):
        export_suite(hub, owner(hub), "s", "jsonl", tmp_path / "b", version=7)

    # a suite whose cases are all held out has nothing to give everyone
    with hub.session() as s:
        secret = suites.split_secret(s)
    hidden = [
        c
        for c in some_cases(40)
        if suites.split_of(suites.split_key(None, suites.input_hash(c.messages)), 90, secret)
        == "heldout"
    ]
    suites.add_cases(hub, "hidden", hidden, heldout_percent=90)
    with pytest.raises(InvalidInput, match="no case that may be exported .*--include-heldout"):
        export_suite(hub, owner(hub), "hidden", "hf", tmp_path / "b")

    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(exports, "_write_jsonl", crash)
    with pytest.raises(OSError, match="disk full"):
        export_suite(hub, owner(hub), "s", "jsonl", tmp_path / "c")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # nothing half-written

    (tmp_path / "empty").mkdir()  # an existing empty directory is fine
    assert export_suite(
        hub, owner(hub), "hidden", "jsonl", tmp_path / "empty", include_heldout=True
    )["cases"] == len(hidden)


def test_hf_export_reads_with_datasets_and_imports_back(hub: Hub, tmp_path: Path) -> None:
    from datasets import load_dataset, load_from_disk

    checks: list[dict[str, Any]] = [
        NEVER,
        ALWAYS,
        {"type": "all_of", "checks": [{"type": "regex", "pattern": "a+"}, ALWAYS]},
        {"type": "json", "schema": {"type": "object"}},
    ]
    cases = [
        suites.CaseIn(
            [{"role": "system", "content": "Be brief."}, *user(f"q{i}")]
            if i % 3
            else user(f"q{i}"),
            checks[i % len(checks)],
            ["hf"],
        )
        for i in range(12)
    ]
    suites.add_cases(hub, "s", cases)
    public = ids_by_split(hub, "s")["public"]
    out = tmp_path / "hf"
    result = export_suite(hub, owner(hub), "s", "hf", out)
    assert {"README.md", "data/test.parquet", "suite.json", "dataset_info.json"} <= set(
        result["files"]
    )

    by_id = {suites.case_id(c.messages, c.expected): c for c in cases}
    disk = load_from_disk(str(out))
    parquet = load_dataset(
        "parquet",
        data_files={"test": str(out / "data" / "test.parquet")},
        cache_dir=str(tmp_path / "cache"),
    )["test"]
    for ds in (disk, parquet):
        assert ds["id"] == public
        for row in ds:
            assert row["messages"] == by_id[row["id"]].messages  # a list of {role, content}
            assert json.loads(row["expected"]) == by_id[row["id"]].expected

    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["license"] == "other"  # imported cases carry no licence
    assert front["task_categories"] == ["text-generation"] and "hf" in front["tags"]
    assert front["configs"][0]["data_files"] == [{"split": "test", "path": "data/test.parquet"}]
    for section in ("## Fields", "## Checks", "## Splits", "## Provenance"):
        assert section in card

    assert reimport(hub, out, "copy") == public  # `upstream suites import` reads it
    assert "Private" not in card
    private = export_suite(hub, owner(hub), "s", "hf", tmp_path / "private", include_heldout=True)
    assert private["splits"]["heldout"] > 0
    assert "Do not publish it" in (tmp_path / "private" / "README.md").read_text()


def test_exports_link_reports_and_keep_unshared_ones_home(tiny_hub: Hub, tmp_path: Path) -> None:
    from upstream import reports
    from upstream.triage import confirm

    maintainer = owner(tiny_hub)
    ana = person(tiny_hub, "ana", "reporter")
    filed = []
    for prompt, consent in (("What is the capital of France?", True), ("Name a colour.", False)):
        data = {
            "model": "tiny",
            "prompt": prompt,
            "expected": NEVER,
            "tags": ["caps"],
            "variants": [f"{prompt} Please."],
            "max_new_tokens": 2,
            "license": "CC-BY-4.0",
            "consent": consent,
        }
        report = reports.submit_one(tiny_hub, reports.parse_report(data), ana, "cli").filed[0]
        confirm(tiny_hub, report.id, maintainer)
        filed.append(report.id)
    suites.build_from_reports(tiny_hub, maintainer, "caps", "caps", heldout_percent=0)

    result = export_suite(tiny_hub, owner(tiny_hub), "caps", "hf", tmp_path / "hf")
    assert result["cases"] == 2  # the prompt and variant of the shared report only
    info = json.loads((tmp_path / "hf" / "suite.json").read_text())
    assert set(info["reports"].values()) == {filed[0]} and len(info["reports"]) == 2
    assert info["counts"]["withheld"] == {"no consent to share": 2}
    assert info["licenses"] == {"CC-BY-4.0": 2} and info["model"] == "tiny"
    card = (tmp_path / "hf" / "README.md").read_text()
    assert yaml.safe_load(card.split("---\n")[1])["license"] == "cc-by-4.0"
    assert "Private" not in card

    tiny_maintainer = person(tiny_hub, "maia", "maintainer", model="tiny")
    maintainers = export_suite(
        tiny_hub, tiny_maintainer, "caps", "jsonl", tmp_path / "j", include_heldout=True
    )
    assert maintainers["cases"] == 2  # held-out or not, unshared reports stay home


def load_scorer(export_dir: Path) -> Any:
    spec = importlib.util.spec_from_file_location("exported_utils", export_dir / "utils.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lm_eval_scorer_is_the_hubs_checks_copied(hub: Hub, tmp_path: Path) -> None:
    suites.add_cases(hub, "s", some_cases(6), heldout_percent=0)
    export_suite(hub, owner(hub), "s", "lm-eval", tmp_path / "task")
    copied = (tmp_path / "task" / "upstream_checks.py").read_text()
    from upstream import checks

    # the hub's source, whole, but for its one import from the hub
    before, after = (
        Path(checks.__file__).read_text().split("from upstream.errors import InvalidInput\n")
    )
    assert before in copied and after in copied
    assert not re.search(r"^(from|import) upstream\b", copied, re.M)
    scorer = load_scorer(tmp_path / "task")

    specs: list[dict[str, Any]] = [
        {"type": "exact", "value": "Paris"},
        {"type": "exact", "value": "Paris", "strict": True},
        {"type": "one_of", "values": ["yes", "no"]},
        {"type": "contains", "values": ["cat", "dog"], "mode": "all"},
        {"type": "not_contains", "values": ["sorry"]},
        {"type": "regex", "pattern": r"^\d+$"},
        {"type": "json", "schema": {"type": "object", "required": ["a"]}},
        {"type": "number", "value": 3.5, "tolerance": 0.1},
        {"type": "max_words", "value": 2},
        {"type": "not", "check": {"type": "contains", "values": ["x"]}},
        {"type": "any_of", "checks": [{"type": "exact", "value": "a"}, ALWAYS]},
    ]
    outputs = ["Paris.", " paris", "Yes!", "a cat and a dog", "I'm sorry", "42", '{"a": 1}']
    outputs += ["```json\n{}\n```", "about 3.55 m", "x", "", "ﬁne  words here"]
    for spec in specs:
        for text in outputs:
            want = parse_check(spec).score(text).passed
            got = scorer.process_results({"expected": json.dumps(spec)}, [text])
            assert got == {"pass": float(want)}, (spec, text)
    broken = {"expected": json.dumps({"type": "regex", "pattern": "("})}
    assert scorer.process_results(broken, ["x"]) == {"pass": 0.0}  # fails, as in Upstream


def test_lm_eval_leaves_out_cases_it_cannot_pose(hub: Hub, tmp_path: Path) -> None:
    history = [*user("hi"), {"role": "assistant", "content": "hello"}, *user("and now?")]
    cases = [
        suites.CaseIn(user("plain"), NEVER, []),
        suites.CaseIn(history, NEVER, []),
        suites.CaseIn(
            user("alike"), {"type": "not", "check": {"type": "similar", "value": "x"}}, []
        ),
    ]
    suites.add_cases(hub, "s", cases, heldout_percent=0)
    result = export_suite(hub, owner(hub), "s", "lm-eval", tmp_path / "task")
    assert result["cases"] == 1 and result["task"] == "upstream_s"
    assert [s["reason"][:20] for s in result["skipped"]] == [
        "lm-eval poses one us",
        "a 'similar' check ne",
    ]
    readme = (tmp_path / "task" / "README.md").read_text()
    assert all(s["id"] in readme for s in result["skipped"])
    assert json.loads((tmp_path / "task" / "suite.json").read_text())["skipped"]

    suites.add_cases(hub, "odd", cases[1:], heldout_percent=0)
    with pytest.raises(InvalidInput, match="can run in lm-eval.*export jsonl or hf instead"):
        export_suite(hub, owner(hub), "odd", "lm-eval", tmp_path / "none")
    assert task_name("my.suite-2") == "upstream_my_suite_2"


def model_outputs(hub: Hub, inputs: list[list[dict[str, str]]]) -> list[GenResult]:
    """The tiny model's greedy replies, from the engine Upstream evaluates with."""
    from upstream.engines.base import GenRequest
    from upstream.engines.hf import HFEngine
    from upstream.registry import resolve

    with hub.session() as s:
        engine = HFEngine.for_revision(hub, resolve(s, "tiny"))
    requests = [GenRequest(messages=m, max_new_tokens=MAX_NEW_TOKENS) for m in inputs]
    return engine.generate(requests)


def test_lm_eval_scores_the_export_as_upstream_does(
    tiny_hub: Hub, tiny_model_dir: Path, tmp_path: Path
) -> None:
    inputs = [
        [{"role": "system", "content": "Answer briefly."}, *user(f"question {i}")]
        if i % 4 == 3
        else user(f"What is the colour number {i}?")
        for i in range(20)
    ]
    results = model_outputs(tiny_hub, inputs)
    outs = [r.text for r in results]
    assert len(set(outs)) > 5  # the prompts draw different replies

    def check_for(i: int, out: str) -> dict[str, Any]:
        # Checks built from the model's own replies, so about half pass, through several
        # check types and their normalisation.
        kinds: list[dict[str, Any]] = [
            {"type": "exact", "value": out, "strict": True},  # passes
            {"type": "exact", "value": f"  {out.upper()}. "},  # passes once normalised
            NEVER,  # fails
            {"type": "not", "check": {"type": "exact", "value": out, "strict": True}},  # fails
            {"type": "regex", "pattern": "^" + re.escape(out[:3])},  # passes
        ]
        return kinds[i % 5]

    cases = [
        suites.CaseIn(m, check_for(i, o), ["lm"])
        for i, (m, o) in enumerate(zip(inputs, outs, strict=True))
    ]
    suites.add_cases(tiny_hub, "s", cases, "tiny", heldout_percent=0)  # all exported
    ours = run_eval(tiny_hub, "tiny", "s", split="public", max_new_tokens=MAX_NEW_TOKENS)
    rate = ours["metrics"]["all"]["rate"]
    assert 0 < rate < 1  # both outcomes occur, so a mismatch could show
    with tiny_hub.session() as s:
        run = s.get(EvalRun, ours["run"])
        assert run is not None
        our_pass = {r.case_id: r.passed for r in run.results}
    replies = {suites.case_id(c.messages, c.expected): o for c, o in zip(cases, outs, strict=True)}
    ended = {
        suites.case_id(c.messages, c.expected)
        for c, r in zip(cases, results, strict=True)
        if r.finish_reason == "stop"
    }
    assert ended & set(our_pass)  # a public reply stopped at EOS: both must cut it there

    export = tmp_path / "task"
    result = export_suite(
        tiny_hub, owner(tiny_hub), "s", "lm-eval", export, max_new_tokens=MAX_NEW_TOKENS
    )
    assert result["cases"] == len(our_pass) and not result["skipped"]

    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf-home"),  # datasets' cache, away from the user's
        "TOKENIZERS_PARALLELISM": "false",
    }
    run_ = subprocess.run(
        [
            sys.executable,
            "-m",
            "lm_eval",
            "--model",
            "hf",
            "--model_args",
            f"pretrained={tiny_model_dir},dtype=float32,add_bos_token=False",
            "--include_path",
            str(export),
            "--tasks",
            result["task"],
            "--apply_chat_template",
            "--batch_size",
            "1",
            "--output_path",
            str(tmp_path / "lm-eval-out"),
            "--log_samples",
        ],
        env=env,
        cwd=tmp_path,  # not the export: its data path must not depend on the directory
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run_.returncode == 0, run_.stderr[-4000:]
    results_file = next((tmp_path / "lm-eval-out").rglob("results_*.json"))
    theirs = json.loads(results_file.read_text())["results"][result["task"]]
    samples_file = next((tmp_path / "lm-eval-out").rglob(f"samples_{result['task']}_*.jsonl"))
    samples = [json.loads(x) for x in samples_file.read_text().splitlines()]

    their_replies = {x["doc"]["id"]: x["filtered_resps"][0] for x in samples}
    assert their_replies == {cid: replies[cid] for cid in our_pass}  # same greedy text
    assert {x["doc"]["id"]: bool(x["pass"]) for x in samples} == our_pass
    assert theirs["pass,none"] == pytest.approx(rate, abs=1e-12)
