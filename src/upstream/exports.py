"""Suite exports for researchers: JSONL, a Hugging Face dataset, an lm-evaluation-harness task.

`upstream suites export NAME --format jsonl|hf|lm-eval --out DIR` writes one suite version
to a new (or empty) directory. What goes out, and why:

- **Public cases only** by default: held-out cases stay private so nobody can fit the test;
  a maintainer may pass `include_heldout`. Cases whose source report was filed without
  consent to share ("kept in this hub only") never leave the hub.
- Every format carries `suite.json`: suite, version, manifest hash, counts, schema version,
  export time, and which report each case came from (case rows cannot hold it: the
  importer, `suites.read_cases`, accepts only prompt/messages/expected/tags/id/split/schema).
- **jsonl**: `cases.jsonl`, one `{"schema", "id", "messages", "expected", "tags", "split"}`
  per line; `upstream suites import` reads it back unchanged.
- **hf**: the directory is a `Dataset.save_to_disk` (so `load_from_disk` and
  `upstream suites import` read it), plus `data/test.parquet` for
  `load_dataset("parquet", ...)` and a dataset card. `expected` is JSON text: checks are
  heterogeneous, and a struct column would merge every check type's fields into each row.
- **lm-eval**: a task directory for `lm_eval --include_path DIR --tasks upstream_NAME
  --apply_chat_template`. The hub's own `checks.py` is copied beside it as
  `upstream_checks.py` and scores each output, so lm-eval's score equals Upstream's for
  the same greedy outputs (a test runs lm-eval on the tiny model and compares case by
  case). lm-eval hands `dataset_kwargs.data_files` to `datasets.load_dataset`, which
  resolves a relative path against the working directory, not the YAML file, so the task
  names its data file by absolute path; the README says how to re-point it after a move.
  lm-eval gives a task one user turn (`doc_to_text`) and one optional system message
  (`description`, read per case), so cases with assistant turns cannot be put to it as
  Upstream puts them; nor can `similar` checks be scored there (they need the hub's
  embedding model). Such cases are left out and listed (`skipped`), never scored as
  failures, so the exported task's score means the same thing as the hub's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from upstream import __version__, checks
from upstream.access import Actor, require
from upstream.checks import CHECK_VERSION, TYPES
from upstream.db.schema import Model, Report, Suite
from upstream.engines.base import DEFAULT_MAX_NEW_TOKENS, check_max_new_tokens
from upstream.errors import InvalidInput
from upstream.suites import (
    CASE_SCHEMA,
    case_split,
    get_suite,
    get_version,
    split_secret,
    version_cases,
)

if TYPE_CHECKING:
    from upstream.hub import Hub

FORMATS = ("jsonl", "hf", "lm-eval")
EXPORT_SCHEMA = 1  # of suite.json and of the lm-eval task layout


@dataclass
class Row:
    """One exported case."""

    id: str
    messages: list[dict[str, str]]
    expected: dict[str, Any]
    tags: list[str]
    split: str
    report: int | None
    license: str | None  # the source report's licence; None for imported cases


@dataclass
class Selection:
    """The cases of a suite version that may leave the hub, and where they came from."""

    suite: str
    version: int
    manifest_hash: str
    model: str | None
    heldout_percent: int
    version_cases: int  # all cases of the version, exported or not
    withheld: dict[str, int]  # reason -> count of cases kept in the hub
    rows: list[Row]


def export_suite(
    hub: Hub,
    actor: Actor,
    name: str,
    fmt: str,
    out_dir: Path,
    version: int | None = None,
    include_heldout: bool = False,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> dict[str, Any]:
    """Write a suite version to `out_dir` as jsonl, hf or lm-eval; returns what was written.
    Held-out cases are included only when asked, for those who may see them."""
    if include_heldout:
        _require_heldout(hub, actor, name)
    if fmt not in FORMATS:
        raise InvalidInput(f"format {fmt!r}: allowed formats are {', '.join(FORMATS)}")
    check_max_new_tokens(max_new_tokens)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidInput(f"--out {out}: exists and is not an empty directory; choose a new one")
    sel = select_cases(hub, name, version, include_heldout)
    skipped: list[dict[str, str]] = []
    if fmt == "lm-eval":
        sel, skipped = _runnable_in_lm_eval(sel)
    extra: dict[str, Any] = {}
    # Written under a temporary name beside `out` and renamed when complete, so a failed
    # export leaves nothing half-written behind.
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{secrets.token_hex(6)}.tmp"
    tmp.mkdir()  # not mkdtemp: its mode 0700 would stay on the export after the rename
    try:
        info = suite_info(sel, fmt, include_heldout)
        if skipped:
            info["skipped"] = skipped
        if fmt == "jsonl":
            _write_jsonl(sel, tmp)
        elif fmt == "hf":
            _write_hf(sel, tmp)
        else:
            extra["task"] = _write_lm_eval(sel, tmp, out.resolve(), max_new_tokens, skipped)
        (tmp / "suite.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
        os.replace(tmp, out)  # an empty `out` is replaced; rename(2) allows that
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {
        "suite": sel.suite,
        "version": sel.version,
        "format": fmt,
        "out": str(out),
        "cases": len(sel.rows),
        "splits": dict(Counter(r.split for r in sel.rows)),
        "skipped": skipped,
        "files": sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()),
        **extra,
    }


def select_cases(
    hub: Hub, name: str, version: int | None = None, include_heldout: bool = False
) -> Selection:
    """The cases of a suite version that may be exported, in manifest order."""
    from sqlalchemy import select

    with hub.session() as s:
        v = get_version(s, name, version)
        suite = s.get(Suite, v.suite_id)
        assert suite is not None
        model = s.get(Model, suite.model_id) if suite.model_id else None
        cases = version_cases(s, v)
        report_ids = {c.report_id for c in cases if c.report_id is not None}
        reports = {r.id: r for r in s.scalars(select(Report).where(Report.id.in_(report_ids)))}
        secret = split_secret(s)
        withheld: Counter[str] = Counter()
        rows = []
        for c in cases:
            split = case_split(c, suite.heldout_percent, secret)
            report = reports.get(c.report_id) if c.report_id is not None else None
            if split == "heldout" and not include_heldout:
                withheld["heldout"] += 1
            elif report is not None and not report.consent:
                withheld["no consent to share"] += 1
            else:
                rows.append(
                    Row(
                        c.id,
                        [{"role": m["role"], "content": m["content"]} for m in c.messages],
                        c.expected,
                        list(c.tags),
                        split,
                        c.report_id,
                        report.license if report is not None else None,
                    )
                )
        sel = Selection(
            suite.name,
            v.number,
            v.manifest_hash,
            model.name if model else None,
            suite.heldout_percent,
            len(cases),
            dict(withheld),
            rows,
        )
    if not sel.rows:
        why = ", ".join(f"{n} {reason}" for reason, n in sel.withheld.items())
        hint = "; maintainers may pass --include-heldout" if sel.withheld.get("heldout") else ""
        raise InvalidInput(
            f"suite {name} v{sel.version} has no case that may be exported ({why}){hint}"
        )
    return sel


def suite_info(sel: Selection, fmt: str, include_heldout: bool) -> dict[str, Any]:
    """The provenance record written as suite.json beside every export."""

    return {
        "schema": EXPORT_SCHEMA,
        "case_schema": CASE_SCHEMA,
        "check_version": CHECK_VERSION,
        "format": fmt,
        "suite": sel.suite,
        "version": sel.version,
        "manifest_hash": sel.manifest_hash,
        "model": sel.model,
        "heldout_percent": sel.heldout_percent,
        "include_heldout": include_heldout,
        "counts": {
            "version_cases": sel.version_cases,
            "exported": len(sel.rows),
            "splits": dict(Counter(r.split for r in sel.rows)),
            "withheld": sel.withheld,
        },
        "reports": {r.id: r.report for r in sel.rows if r.report is not None},
        "licenses": dict(Counter(r.license or "unknown (imported)" for r in sel.rows)),
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "exported_by": f"upstream {__version__}",
    }


def case_line(r: Row) -> dict[str, Any]:
    """A case as `suites.read_cases` imports it (schema, id and split ride along)."""
    return {
        "schema": CASE_SCHEMA,
        "id": r.id,
        "messages": r.messages,
        "expected": r.expected,
        "tags": r.tags,
        "split": r.split,
    }


# ---------------------------------------------------------------- jsonl


def _write_jsonl(sel: Selection, out: Path) -> None:
    with (out / "cases.jsonl").open("w", encoding="utf-8") as f:
        for r in sel.rows:
            f.write(json.dumps(case_line(r), ensure_ascii=False) + "\n")


# ---------------------------------------------------------------- hf


def _write_hf(sel: Selection, out: Path) -> None:
    from datasets import Dataset, Features, List, Value
    from datasets.utils import logging as ds_logging

    features = Features(
        {
            "schema": Value("int32"),
            "id": Value("string"),
            "messages": List({"role": Value("string"), "content": Value("string")}),
            "expected": Value("string"),  # a check spec as JSON text
            "tags": List(Value("string")),
            "split": Value("string"),
        }
    )
    rows = [{**case_line(r), "expected": json.dumps(r.expected)} for r in sel.rows]
    bars = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        ds = Dataset.from_list(rows, features=features)
        ds.save_to_disk(str(out))
        (out / "data").mkdir()
        ds.to_parquet(str(out / "data" / "test.parquet"))
    finally:
        if bars:
            ds_logging.enable_progress_bar()
    (out / "README.md").write_text(_dataset_card(sel), encoding="utf-8")


def _dataset_card(sel: Selection) -> str:

    licenses = sorted({r.license for r in sel.rows if r.license})
    imported = sum(1 for r in sel.rows if r.report is None)
    license_id = licenses[0].lower() if len(licenses) == 1 and not imported else "other"
    splits = Counter(r.split for r in sel.rows)
    tags = Counter(t for r in sel.rows for t in r.tags)
    n = len(sel.rows)
    size = "n<1K" if n < 1000 else "1K<n<10K" if n < 10_000 else "10K<n<100K"
    front = {
        "license": license_id,
        "task_categories": ["text-generation"],
        "tags": ["upstream", "evaluation", "regression-tests", *sorted(tags)[:20]],
        "size_categories": [size],
        "pretty_name": f"Upstream suite {sel.suite} v{sel.version}",
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": "test", "path": "data/test.parquet"}],
            }
        ],
    }
    yaml_lines = "\n".join(f"{k}: {json.dumps(v, ensure_ascii=False)}" for k, v in front.items())
    subject = f"the model `{sel.model}`" if sel.model else "open models"
    tag_list = ", ".join(f"`{t}` ({c})" for t, c in tags.most_common()) or "none"
    split_list = ", ".join(f"{c} {s}" for s, c in sorted(splits.items()))
    licence_note = (
        ", ".join(f"{lic} ({sum(r.license == lic for r in sel.rows)})" for lic in licenses)
        or "none recorded"
    )
    types = ", ".join(f"`{t}`" for t in TYPES)
    return f"""---
{yaml_lines}
---

# Upstream suite `{sel.suite}`, version {sel.version}

Regression tests for {subject}, exported from an Upstream hub: inputs on which a model
failed, each with a machine-checkable expectation of a good reply.
{_heldout_warning(sel)}
- Cases: {n} ({split_list}); the suite version has {sel.version_cases}.
- Tags: {tag_list}.

## Loading

```python
from datasets import load_from_disk, load_dataset
ds = load_from_disk("THIS_DIR")                                  # the cases, as one Dataset
ds = load_dataset("parquet", data_files={{"test": "THIS_DIR/data/test.parquet"}})["test"]
```

`upstream suites import NAME --jsonl THIS_DIR` imports the cases into another hub with
the same case ids. To publish on the Hugging Face Hub, upload `README.md` and `data/`
(the other files are the `save_to_disk` copy).

## Fields

| field | type | meaning |
|---|---|---|
| `schema` | int | case schema version ({CASE_SCHEMA}) |
| `id` | string | case id: sha256 of (input, check); stable across hubs |
| `messages` | list of {{role, content}} | the chat input (system / user / assistant turns) |
| `expected` | string | the check spec as JSON text: `json.loads(row["expected"])` |
| `tags` | list of string | topics of the failure |
| `split` | string | `public` or `heldout` (see Splits) |

## Checks

A case passes when the model's greedy reply to `messages` (the chat template applied,
ready for the assistant's turn) satisfies its check. Check spec version {CHECK_VERSION}.

- Types: {types}.
- Examples: `{{"type": "exact", "value": "Paris"}}`, `{{"type": "max_words", "value": 1}}`,
  `{{"type": "all_of", "checks": [...]}}`.
- Text checks compare normalised text by default: Unicode NFKC, case folded, whitespace
  collapsed, surrounding whitespace and punctuation stripped ("Paris." matches "paris").
  `"strict": true` compares exactly; `case_sensitive`, `keep_punctuation` and
  `unicode_form` change single steps.
- `similar` compares sentence embeddings (all-MiniLM-L6-v2) with a cosine threshold.
- Scoring is pure: stored replies can be re-scored without generating again. The
  reference implementation is Upstream's `checks.py`; an `lm-eval` export of a suite
  ships a copy of it.

## Splits

Each case is `public` or `heldout` by a stable rule on its id: the first 8 hex digits of
sha256("split:" + id), mod 100, below {sel.heldout_percent} make it held-out. Held-out
cases stay in the hub, so that contributors cannot fit the test. All rows here form the
single `test` split of the parquet config.

## Provenance

- Suite `{sel.suite}` version {sel.version}, manifest sha256 `{sel.manifest_hash}`.
- {n - imported} case(s) from confirmed failure reports (which report: `suite.json`),
  {imported} imported or added by hand. Cases whose reporter did not consent to sharing
  are never exported.
- Licences of the source reports: {licence_note}.
- `suite.json` also records the export time and the counts.
"""


def _heldout_warning(sel: Selection) -> str:
    held = sum(r.split == "heldout" for r in sel.rows)
    if not held:
        return ""
    return (
        f"\n**Private: this maintainer's export includes {held} held-out case(s). "
        "Do not publish it.**\n"
    )


# ---------------------------------------------------------------- lm-eval


def _runnable_in_lm_eval(sel: Selection) -> tuple[Selection, list[dict[str, str]]]:
    """Leave out the cases lm-eval cannot pose or score as Upstream does."""
    keep, skipped = [], []
    for r in sel.rows:
        roles = [m["role"] for m in r.messages]
        if roles not in (["user"], ["system", "user"]):
            why = "lm-eval poses one user turn (after an optional system message)"
        elif _uses_similar(r.expected):
            why = "a 'similar' check needs the hub's embedding model to score"
        else:
            keep.append(r)
            continue
        skipped.append({"id": r.id, "reason": why})
    if not keep:
        reasons = sorted({s["reason"] for s in skipped})
        raise InvalidInput(
            f"suite {sel.suite} v{sel.version}: none of its {len(sel.rows)} exportable "
            f"case(s) can run in lm-eval ({'; '.join(reasons)}); export jsonl or hf instead"
        )
    return replace(sel, rows=keep), skipped


def _uses_similar(spec: dict[str, Any]) -> bool:
    if spec.get("type") == "similar":
        return True
    children = spec.get("checks", []) + ([spec["check"]] if "check" in spec else [])
    return any(isinstance(c, dict) and _uses_similar(c) for c in children)


def task_name(suite: str) -> str:
    """The lm-eval task name of a suite: `upstream_` + the name with only [a-z0-9_]."""
    return "upstream_" + re.sub(r"[^a-z0-9_]", "_", suite)


def _write_lm_eval(
    sel: Selection, out: Path, final: Path, max_new_tokens: int, skipped: list[dict[str, str]]
) -> str:
    """Data, task YAML, scorer and the copied checks; returns the task name."""
    with (out / "test.jsonl").open("w", encoding="utf-8") as f:
        for r in sel.rows:
            system = r.messages[0]["content"] if r.messages[0]["role"] == "system" else ""
            doc = {
                "id": r.id,
                "system": system,
                "prompt": r.messages[-1]["content"],
                "expected": json.dumps(r.expected),  # JSON text: see the module docstring
                "tags": r.tags,
                "split": r.split,
            }
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    task = task_name(sel.suite)
    (out / f"{task}.yaml").write_text(
        _task_yaml(sel, task, final / "test.jsonl", max_new_tokens), encoding="utf-8"
    )
    (out / "utils.py").write_text(SCORER, encoding="utf-8")
    (out / "upstream_checks.py").write_text(standalone_checks(), encoding="utf-8")
    (out / "README.md").write_text(
        _task_readme(sel, task, final, max_new_tokens, skipped), encoding="utf-8"
    )
    return task


def _task_yaml(sel: Selection, task: str, data: Path, max_new_tokens: int) -> str:
    q = json.dumps  # a JSON string is a valid YAML scalar, whatever the path holds
    return f"""# Upstream suite {sel.suite} v{sel.version} (manifest {sel.manifest_hash[:12]});
# see README.md. Greedy generation and the hub's own checks, so the score matches Upstream's.
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    # absolute: lm-eval resolves data files against the working directory, not this file
    test: {q(str(data))}
test_split: test
output_type: generate_until
doc_to_text: prompt  # the user turn
description: system  # per case: the system message, or "" for none
doc_to_target: expected  # shown in logged samples; scoring reads the check itself
num_fewshot: 0
generation_kwargs:
  until: []  # the tokenizer's EOS only, as in Upstream
  do_sample: false
  max_gen_toks: {max_new_tokens}
process_results: !function utils.process_results
metric_list:
  - metric: pass
    aggregation: mean
    higher_is_better: true
metadata:
  version: {sel.version}
  upstream_suite: {q(sel.suite)}
  upstream_manifest: {q(sel.manifest_hash)}
"""


def _task_readme(
    sel: Selection, task: str, final: Path, max_new_tokens: int, skipped: list[dict[str, str]]
) -> str:
    left_out = "".join(f"\n- `{s['id']}`: {s['reason']}" for s in skipped) or " none."
    splits = ", ".join(f"{c} {s}" for s, c in sorted(Counter(r.split for r in sel.rows).items()))
    return f"""# lm-eval task `{task}`: Upstream suite `{sel.suite}` v{sel.version}
{_heldout_warning(sel)}
- Cases: {len(sel.rows)} ({splits}); manifest sha256 `{sel.manifest_hash}`.

Run it offline on a local model directory:

```bash
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 lm_eval --model hf \\
  --model_args pretrained=MODEL_DIR,dtype=float32,add_bos_token=False \\
  --include_path {final} --tasks {task} --apply_chat_template
```

The score (`pass`, mean over cases) equals Upstream's pass rate for the same model, because
everything that decides it is the same:

- **Prompt**: `--apply_chat_template` is required; the user turn is `prompt` and the system
  message, where a case has one, is `system` (via `description`). Do not add
  `--system_instruction` or few-shot examples. `add_bos_token=False` tokenizes the
  templated text without added special tokens, as Upstream does (lm-eval does the same on
  its own when the template starts with the BOS token).
- **Generation**: greedy, at most {max_new_tokens} new tokens, stopping at the EOS token only;
  the reply is decoded without special tokens and scored unstripped. `dtype=float32` is
  what Upstream runs, so greedy choices are the same.
- **Scoring**: `utils.process_results` scores each reply with `upstream_checks.py`, a copy
  of the hub's `upstream/checks.py` (only its import of the hub's error class is replaced),
  so no check is implemented twice. A case whose check cannot be scored fails, as in
  Upstream. `json` checks with a schema need the `jsonschema` package.

`{task}.yaml` names `test.jsonl` by absolute path, because lm-eval hands `data_files` to
`datasets.load_dataset`, which resolves a relative path against the working directory. If
you move this directory, change that line to the new path.

Cases left out of this task (lm-eval cannot pose or score them as Upstream does):{left_out}
"""


# The lm-eval scorer: loads the copied checks from beside itself (lm-eval imports this
# file by path, so a plain `import upstream_checks` would not find them).
SCORER = '''"""lm-eval scorer for an Upstream suite export: the hub's own checks, copied beside."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any


def _load_checks() -> Any:
    path = Path(__file__).resolve().with_name("upstream_checks.py")
    name = "upstream_checks_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


checks = _load_checks()


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """1.0 when the reply passes the case's check, else 0.0 (as Upstream scores it)."""
    try:
        outcome = checks.parse_check(json.loads(doc["expected"])).score(results[0])
    except Exception:  # a check that cannot be scored fails its case, as in Upstream
        return {"pass": 0.0}
    return {"pass": 1.0 if outcome.passed else 0.0}
'''

_HUB_IMPORT = "from upstream.errors import InvalidInput\n"
_STANDALONE_ERROR = '''

class InvalidInput(ValueError):
    """A check spec that cannot be accepted (upstream.errors.InvalidInput in the hub)."""
'''


def standalone_checks() -> str:
    """The source of `upstream/checks.py`, made importable without the hub."""

    source = Path(checks.__file__).read_text(encoding="utf-8")
    if source.count(_HUB_IMPORT) != 1:
        raise RuntimeError("upstream/checks.py changed its imports; update standalone_checks")
    text = source.replace(_HUB_IMPORT, _STANDALONE_ERROR.lstrip("\n"))
    if re.search(r"^\s*(from|import) upstream\b", text, re.M):
        raise RuntimeError("upstream/checks.py imports the hub; it cannot be copied standalone")
    digest = hashlib.sha256(source.encode()).hexdigest()
    header = (
        "# Copied from upstream/checks.py (sha256 " + digest + ") by `upstream suites export`;\n"
        "# only its import of the hub's error class is replaced. Do not edit: scoring must\n"
        "# stay identical to the hub's.\n"
    )
    return header + text


def jsonl_lines(
    hub: Hub, actor: Actor, name: str, version: int | None = None, include_heldout: bool = False
) -> list[str]:
    """A suite version as the lines of its jsonl export (a download from its page);
    held-out cases only when asked, for those who may see them."""
    if include_heldout:
        _require_heldout(hub, actor, name)
    sel = select_cases(hub, name, version, include_heldout)
    return [json.dumps(case_line(r), ensure_ascii=False) + "\n" for r in sel.rows]


def _require_heldout(hub: Hub, actor: Actor, name: str) -> None:
    with hub.session() as s:
        suite = get_suite(s, name)
        model = s.get(Model, suite.model_id) if suite.model_id else None
    require(actor, "suites.heldout", model.name if model else None)
