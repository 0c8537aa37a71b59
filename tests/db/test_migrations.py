from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from upstream.db import MIGRATIONS_DIR, head_revision, migrate, open_database
from upstream.db.schema import Base


def test_migrations_from_empty_database_match_the_schema(tmp_path: Path) -> None:
    engine = open_database(f"sqlite:///{tmp_path / 'fresh.db'}")
    assert inspect(engine).get_table_names() == []
    migrate(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"schema.py and the migrations disagree: {diff}"
    tables = set(inspect(engine).get_table_names())
    assert {"models", "revisions", "revision_parents", "tags", "jobs"} <= tables


def test_migrate_is_idempotent_and_recorded(tmp_path: Path) -> None:
    engine = open_database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    migrate(engine)  # run on every open: must be a no-op the second time
    with engine.connect() as conn:
        version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    assert version == head_revision()


def test_head_revision_is_alembics_head() -> None:
    # migrate() skips Alembic when the database is at head_revision(): both must agree
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert ScriptDirectory.from_config(config).get_current_head() == head_revision()


def test_an_older_database_is_still_migrated(tmp_path: Path) -> None:
    engine = open_database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:  # back to before the newest migration
        config.attributes["connection"] = conn
        command.downgrade(config, "0006")
    assert "workers" not in inspect(engine).get_table_names()
    migrate(engine)
    assert "workers" in inspect(engine).get_table_names()


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    engine = open_database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_a_hub_with_suites_keeps_its_unkeyed_split_and_a_new_one_gets_a_secret(
    tmp_path: Path,
) -> None:
    from alembic import command
    from alembic.config import Config

    def secret(engine: object) -> str:
        with engine.connect() as conn:  # type: ignore[attr-defined]
            return str(conn.execute(text("SELECT value FROM hub_secrets")).scalar())

    fresh = open_database(f"sqlite:///{tmp_path / 'new.sqlite'}")
    migrate(fresh)
    assert len(secret(fresh)) == 64
    other = open_database(f"sqlite:///{tmp_path / 'other.sqlite'}")
    migrate(other)
    assert secret(other) != secret(fresh)  # each hub its own

    old = open_database(f"sqlite:///{tmp_path / 'old.sqlite'}")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with old.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0007")
        conn.execute(
            text(
                "INSERT INTO suites (name, description, heldout_percent, kind, created_at) "
                "VALUES ('s', '', 30, 'community', '2026-01-01')"
            )
        )
    migrate(old)
    assert secret(old) == ""  # its cases stay on the side they were measured on
