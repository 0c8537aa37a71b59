"""The Hub: one object holding settings, the database, the blob store and the job queue.

Domain functions take a Hub as their context; the CLI, the API and the pages all open
one and call the same functions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from upstream.blobs import BlobStore
from upstream.db import migrate, open_database, session_factory
from upstream.errors import NotFound
from upstream.jobs import JobQueue
from upstream.registry import materialize
from upstream.reports import FilingQueue
from upstream.settings import Settings
from upstream.threads import Batched

if TYPE_CHECKING:
    from upstream.db.schema import Revision
    from upstream.duplicates import SimilarityIndex


class Hub:
    def __init__(self, settings: Settings):
        self.settings = settings
        settings.home.mkdir(parents=True, exist_ok=True)
        settings.work_dir.mkdir(parents=True, exist_ok=True)
        self.engine = open_database(settings.database_url)
        migrate(self.engine)
        self._sessions = session_factory(self.engine)
        self.blobs = BlobStore(settings.blob_dir)
        self.jobs = JobQueue(self)
        # single report filings arriving together are embedded together, then filed
        # together (reports.submit_one)
        self.embedder: Batched[str, Any] = Batched(_embed_batch, FilingQueue.MAX_BATCH)
        self.filings = FilingQueue(self)

    @classmethod
    def open(cls, home: str | Path | None = None, create: bool = True, **overrides: Any) -> Hub:
        """Open the hub at `home` ($UPSTREAM_HOME or ./.upstream); create it if asked."""
        settings = Settings.load(home, **overrides)
        if not create and not settings.home.exists():
            raise NotFound(
                f"no hub at {settings.home}; run `upstream init` (or `upstream up`) first, "
                "or set UPSTREAM_HOME"
            )
        return cls(settings)

    @cached_property
    def similarity(self) -> SimilarityIndex:
        """Report embeddings in memory, for duplicate detection (loaded on first use)."""
        from upstream.duplicates import SimilarityIndex

        return SimilarityIndex()

    def revision_dir(self, revision: Revision) -> Path:
        """A directory holding the revision's files (made once), for engines to load."""
        return materialize(self, revision)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as s:
            yield s

    def close(self) -> None:
        self.engine.dispose()


def _embed_batch(texts: list[str]) -> list[Any]:
    """Unit vectors of `texts` for duplicate detection, one batched pass."""
    from upstream.duplicates import embed_texts  # numpy and torch, for the filings only

    return list(embed_texts(texts))
