from pathlib import Path

import pytest

from upstream.errors import InvalidInput
from upstream.settings import Policy, Settings, policy_for


def test_defaults_live_under_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UPSTREAM_HOME", raising=False)
    s = Settings.load(tmp_path / "h")
    assert s.database_url == f"sqlite:///{tmp_path / 'h' / 'upstream.db'}"
    assert s.blob_dir == tmp_path / "h" / "blobs"
    assert (s.host, s.port) == ("127.0.0.1", 8321)


def test_env_beats_config_file_beats_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "h"
    home.mkdir()
    (home / "config.toml").write_text('port = 9000\nblob_dir = "/tmp/elsewhere"\n')
    monkeypatch.setenv("UPSTREAM_HOME", str(home))
    monkeypatch.setenv("UPSTREAM_PORT", "9100")
    s = Settings.load()
    assert s.home == home
    assert s.port == 9100  # env wins over the file
    assert s.blob_dir == Path("/tmp/elsewhere")  # the file wins over the default


def test_unknown_or_bad_settings_are_named(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("colour = 'blue'\n")
    with pytest.raises(InvalidInput, match="unknown setting.*colour"):
        Settings.load(tmp_path)
    (tmp_path / "config.toml").write_text("port = 'many'\n")
    with pytest.raises(InvalidInput, match="port='many'"):
        Settings.load(tmp_path)


def test_policy_margin_from_env_config_and_per_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Settings.load(tmp_path).policy_margin == 0.10
    (tmp_path / "config.toml").write_text(
        "policy_margin = 0.2\n[policy.m]\nmargin = 0.05\n[policy.wide]\nmargin = 1\n"
    )
    s = Settings.load(tmp_path)
    assert policy_for(s, "other") == Policy(1, 0.05, 0.05, 0.2)
    assert policy_for(s, "m").margin == 0.05
    with pytest.raises(InvalidInput, match="0 < margin < 1"):
        policy_for(s, "wide")
    monkeypatch.setenv("UPSTREAM_POLICY_MARGIN", "0.15")  # env beats the file
    assert policy_for(Settings.load(tmp_path), "other").margin == 0.15
    monkeypatch.setenv("UPSTREAM_POLICY_MARGIN", "0")
    with pytest.raises(InvalidInput, match="margin"):
        policy_for(Settings.load(tmp_path), "other")
