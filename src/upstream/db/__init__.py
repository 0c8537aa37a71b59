"""Database engine, sessions and migrations (SQLite in WAL mode by default, or PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.orm import Session, sessionmaker

from upstream.errors import InvalidInput, NotFound

Row = TypeVar("Row")

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def open_database(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL, foreign keys and a busy timeout."""
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            json_serializer=_json_dumps,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    if url.startswith(("postgresql", "postgres")):
        # psycopg 3 (the `postgres` extra) unless the URL names another driver
        if url.startswith("postgres://"):
            url = "postgresql://" + url.removeprefix("postgres://")
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
        return create_engine(url, pool_pre_ping=True, json_serializer=_json_dumps)
    raise InvalidInput(
        f"database_url {url!r}: only sqlite:/// and postgresql:// URLs are supported"
    )


def _json_dumps(value: Any) -> str:
    # Non-ASCII kept as is, so text search finds "café" in stored JSON.
    return json.dumps(value, ensure_ascii=False)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration (run on every open; cheap when current).

    A database already at the newest revision is left alone without importing Alembic
    (0.1 s of every command's start).
    """
    if _current_revision(engine) == head_revision():
        return
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def rows_of_model(
    session: Session, entity: type[Row], ids: Sequence[int], model_id: int, what: str
) -> tuple[dict[int, Row], list[int]]:
    """The rows of `entity` (reports, contributions) with these ids, and the ids among
    them that belong to another model than `model_id`, for the caller to refuse in its
    own words. An id with no row is NotFound, named with `what` ("--fixes: no report")."""
    table: Any = entity
    rows = {r.id: r for r in session.scalars(select(table).where(table.id.in_(list(ids))))}
    missing = [i for i in ids if i not in rows]
    if missing:
        raise NotFound(f"{what} {', '.join(map(str, missing))}")
    return rows, [i for i in ids if rows[i].model_id != model_id]


def head_revision() -> str:
    """The newest migration's id: migration files are named NNNN_what.py, ids are NNNN."""
    files = (MIGRATIONS_DIR / "versions").glob("[0-9]*_*.py")
    return max((p.name.split("_", 1)[0] for p in files), default="")


def _current_revision(engine: Engine) -> str | None:
    from sqlalchemy import inspect, text

    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    return rows[0] if len(rows) == 1 else None


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
