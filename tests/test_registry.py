import json
import shutil
from pathlib import Path

import pytest

from tests.people import owner, person
from upstream.db.schema import Revision
from upstream.errors import Conflict, Forbidden, InvalidInput, NotFound
from upstream.hub import Hub
from upstream.registry import (
    import_model,
    list_models,
    materialize,
    resolve,
    revision_summary,
    set_tag,
)


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_import_records_revision_and_reimport_stores_nothing(
    hub: Hub, tiny_model_dir: Path
) -> None:
    first = import_model(hub, str(tiny_model_dir), "tiny")
    blobs_before = sorted(hub.blobs)
    again = import_model(hub, str(tiny_model_dir), "tiny")
    assert first.new and first.stored_bytes == first.total_bytes > 0
    assert (again.new, again.stored_bytes, again.revision) == (False, 0, first.revision)
    assert sorted(hub.blobs) == blobs_before
    with hub.session() as s:
        rev = resolve(s, "tiny")
        info = revision_summary(rev.model, rev)
    assert info["revision"] == first.revision and info["tags"] == ["latest"]
    assert info["architecture"] == "LlamaForCausalLM"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(info["files"])
    assert info["num_parameters"] > 1000


def test_revision_id_is_the_manifest_hash(hub: Hub, tiny_model_dir: Path, tmp_path: Path) -> None:
    a = import_model(hub, str(tiny_model_dir), "tiny")
    changed = copy_model(tiny_model_dir, tmp_path / "changed")
    config = json.loads((changed / "config.json").read_text())
    config["rms_norm_eps"] = 1e-5
    (changed / "config.json").write_text(json.dumps(config))
    b = import_model(hub, str(changed), "tiny")
    assert b.new and b.revision != a.revision
    # only the config is new; the weights blob is shared
    assert b.stored_bytes == (changed / "config.json").stat().st_size
    with hub.session() as s:
        assert resolve(s, "tiny").hash == b.revision  # latest moved
        assert resolve(s, f"tiny@{a.revision[:8]}").hash == a.revision
        set_tag(s, resolve(s, f"tiny@{a.revision[:8]}"), "stable")
        s.commit()
        assert resolve(s, "tiny@stable").hash == a.revision
        [model] = list_models(s)
        assert len(model.revisions) == 2


def test_user_tags_move_and_go(tiny_hub: Hub) -> None:
    from upstream.registry import tag, untag

    maintainer = person(tiny_hub, "mae", "maintainer", model="tiny")
    with tiny_hub.session() as s:
        latest = resolve(s, "tiny").hash
    assert tag(tiny_hub, maintainer, f"tiny@{latest[:6]}", "stable")["revision"] == latest
    with tiny_hub.session() as s:
        assert resolve(s, "tiny@stable").hash == latest
    contributor = person(tiny_hub, "bo")
    with pytest.raises(Forbidden, match="only a maintainer of tiny may move tags"):
        untag(tiny_hub, contributor, "tiny", "stable")
    with pytest.raises(Forbidden, match="only a maintainer of tiny may move tags"):
        tag(tiny_hub, contributor, "tiny", "other")
    untag(tiny_hub, maintainer, "tiny", "stable")
    with tiny_hub.session() as s, pytest.raises(NotFound, match="no such tag"):
        resolve(s, "tiny@stable")
    with pytest.raises(InvalidInput, match="cannot be removed"):
        untag(tiny_hub, owner(tiny_hub), "tiny", "latest")
    with pytest.raises(InvalidInput, match="tag 'Bad Tag'"):
        tag(tiny_hub, owner(tiny_hub), "tiny", "Bad Tag")


def test_repo_id_resolves_from_the_local_hf_cache_only(
    hub: Hub, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the cache layout huggingface_hub uses: models--ORG--NAME/{refs/main, snapshots/SHA/}
    cache = tmp_path / "hf-cache"
    repo = cache / "models--tinyorg--tiny-llama"
    snapshot = repo / "snapshots" / ("a" * 40)
    shutil.copytree(tiny_model_dir, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    result = import_model(hub, "tinyorg/tiny-llama", "from-cache")
    with hub.session() as s:
        assert resolve(s, "from-cache").source["kind"] == "hf_cache"
    assert result.new


def test_only_the_weights_transformers_loads_are_stored(
    hub: Hub, tiny_model_dir: Path, tmp_path: Path
) -> None:
    d = copy_model(tiny_model_dir, tmp_path / "with-extra")
    shutil.copy(d / "model.safetensors", d / "consolidated.safetensors")
    result = import_model(hub, str(d), "extra")
    with hub.session() as s:
        files = resolve(s, "extra").manifest["files"]
    assert "consolidated.safetensors" not in files and "model.safetensors" in files
    assert result.total_bytes < 2 * (d / "model.safetensors").stat().st_size


def test_reference_errors_name_the_problem(tiny_hub: Hub) -> None:
    with tiny_hub.session() as s:
        with pytest.raises(NotFound, match="unknown model 'nope'.*tiny"):
            resolve(s, "nope")
        with pytest.raises(NotFound, match="no such tag"):
            resolve(s, "tiny@v9")
        with pytest.raises(NotFound, match="no revision of tiny starts with 'ffff"):
            resolve(s, "tiny@ffffffff")
        # two revisions sharing a prefix make that prefix ambiguous
        rev = resolve(s, "tiny")
        for h in ("abcd" + "1" * 60, "abcd" + "2" * 60):
            s.add(
                Revision(
                    model_id=rev.model_id,
                    hash=h,
                    manifest=rev.manifest,
                    architecture=rev.architecture,
                )
            )
        s.commit()
        with pytest.raises(Conflict, match="ambiguous"):
            resolve(s, "tiny@abcd")
        assert resolve(s, "tiny@abcd1").hash.startswith("abcd1")


def test_pickle_only_directory_is_refused(hub: Hub, tiny_model_dir: Path, tmp_path: Path) -> None:
    d = copy_model(tiny_model_dir, tmp_path / "pickled")
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    with pytest.raises(InvalidInput, match="only pickle weights.*never unpickles"):
        import_model(hub, str(d), "pickled")
    with hub.session() as s:
        assert list_models(s) == []  # nothing half-filed


@pytest.mark.parametrize(
    "damage, message",
    [
        ("no-weights", "no weights found"),
        ("truncate", "corrupt or truncated safetensors"),
        ("garbage", "corrupt or truncated safetensors"),
        ("no-config", "no config.json"),
        ("bad-arch", "BertModel.*not a causal language model"),
        ("remote-code", "never runs remote code"),
    ],
)
def test_bad_directories_are_refused_before_anything_is_stored(
    hub: Hub, tiny_model_dir: Path, tmp_path: Path, damage: str, message: str
) -> None:
    d = copy_model(tiny_model_dir, tmp_path / damage)
    weights = d / "model.safetensors"
    config = json.loads((d / "config.json").read_text())
    if damage == "no-weights":
        weights.unlink()
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:-100])
    elif damage == "garbage":
        weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    elif damage == "no-config":
        (d / "config.json").unlink()
    elif damage == "bad-arch":
        config.update(model_type="bert", architectures=["BertModel"])
    elif damage == "remote-code":
        config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (d / "config.json").write_text(json.dumps(config)) if damage in (
        "bad-arch",
        "remote-code",
    ) else None
    with pytest.raises(InvalidInput, match=message):
        import_model(hub, str(d), "broken")
    assert list(hub.blobs) == []


def test_missing_paths_and_bad_names(hub: Hub, tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no such file or directory"):
        import_model(hub, str(tmp_path / "nothing-here"), "x")
    with pytest.raises(NotFound, match="local Hugging Face cache"):
        import_model(hub, "someorg/some-model-not-cached", "x")
    with pytest.raises(NotFound, match="unknown bundled model"):
        import_model(hub, "bundled:gpt-5", "x")
    with pytest.raises(InvalidInput, match="model name"):
        import_model(hub, str(tmp_path), "Bad Name!")


def test_corrupt_and_truncated_gguf_are_refused(hub: Hub, tmp_path: Path) -> None:
    not_gguf = tmp_path / "fake.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 this is a zip")
    with pytest.raises(InvalidInput, match="not a GGUF file"):
        import_model(hub, str(not_gguf), "x")
    from upstream.registry import bundled_gguf_path

    truncated = tmp_path / "cut.gguf"
    with open(bundled_gguf_path("smollm2-135m-instruct"), "rb") as f:
        truncated.write_bytes(f.read(2_000_000))
    with pytest.raises(InvalidInput, match="truncated GGUF|corrupt or truncated GGUF"):
        import_model(hub, str(truncated), "x")
    with hub.session() as s:
        assert list_models(s) == []


def test_materialize_links_the_revision_files(tiny_hub: Hub) -> None:
    with tiny_hub.session() as s:
        rev = resolve(s, "tiny")
    path = materialize(tiny_hub, rev)
    assert materialize(tiny_hub, rev) == path
    assert (path / "model.safetensors").stat().st_size == rev.manifest["files"][
        "model.safetensors"
    ]["size"]
    assert (path / ".complete").read_text() == rev.hash


def test_only_admins_queue_imports_and_tokens_only_from_allowed_folders(
    hub: Hub, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from upstream import accounts
    from upstream.registry import queue_import

    with pytest.raises(Forbidden, match="admin may import models"):
        queue_import(hub, person(hub, "mae", "maintainer"), str(tiny_model_dir), "tiny")
    made = accounts.create_token(hub, owner(hub), owner(hub).name)
    through_api = accounts.authenticate(hub, made["token"])  # the owner, with a token
    with pytest.raises(Forbidden, match="bundled:NAME only"):
        queue_import(hub, through_api, str(tiny_model_dir), "tiny")
    assert hub.jobs.get(queue_import(hub, through_api, "bundled:smollm2-135m-instruct", "s"))
    allowed = Hub.open(hub.settings.home, import_dirs=str(tiny_model_dir))
    try:
        assert queue_import(allowed, through_api, str(tiny_model_dir), "tiny") > 0
        with pytest.raises(Forbidden, match="only from inside"):
            queue_import(allowed, through_api, str(tmp_path), "x")
    finally:
        allowed.close()
    job = queue_import(hub, owner(hub), str(tiny_model_dir), "tiny")  # the CLI: anywhere
    assert hub.jobs.get(job).args == {"source": str(tiny_model_dir), "name": "tiny"}
