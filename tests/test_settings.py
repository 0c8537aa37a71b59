from pathlib import Path

import pytest

from upstream.errors import InvalidInput
from upstream.settings import Settings


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
