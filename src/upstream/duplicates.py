"""Duplicate reports: the same content filed twice, and reports close in meaning.

Exact repeats are found by the sha256 of the normalised content (model, revision,
messages case-folded with whitespace collapsed, variants, check). Likely duplicates are
found by embedding the user turns with all-MiniLM-L6-v2: a new report within
`duplicate_distance` (cosine distance) of an open report of the same model is linked to
the nearest one. Linked reports form clusters (connected components).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from upstream.db.schema import CLOSED_STATUSES, Report


def find_same_content(session: Session, hashes: Iterable[str]) -> dict[str, Report]:
    """Existing reports with any of these content hashes, by hash."""
    wanted = sorted(set(hashes))
    found: dict[str, Report] = {}
    for start in range(0, len(wanted), 500):  # stay under SQL parameter limits
        chunk = wanted[start : start + 500]
        for r in session.scalars(select(Report).where(Report.content_hash.in_(chunk))):
            found.setdefault(r.content_hash, r)
    return found


def embed_texts(texts: Sequence[str]) -> np.ndarray:
    """Unit vectors for texts, in one batched pass; (n, 384)."""
    from upstream.embeddings import embed

    return embed(list(texts))


Distances = tuple[np.ndarray, np.ndarray]  # report ids (n,), distances to k vectors (n, k)


@dataclass
class _Vectors:
    """One model's report embeddings: rows [0, n) of a growing matrix."""

    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    matrix: np.ndarray = field(default_factory=lambda: np.zeros((0, 384), dtype=np.float32))
    n: int = 0
    last_id: int = 0

    def append(self, ids: list[int], rows: list[np.ndarray]) -> None:
        need = self.n + len(ids)
        if need > len(self.ids):  # grow by doubling: appends stay amortised O(1)
            cap = max(need, 2 * len(self.ids), 256)
            self.ids = np.resize(self.ids, cap)
            grown = np.zeros((cap, self.matrix.shape[1]), dtype=np.float32)
            grown[: self.n] = self.matrix[: self.n]
            self.matrix = grown
        self.ids[self.n : need] = ids
        self.matrix[self.n : need] = np.stack(rows)
        self.n = need
        self.last_id = max(self.last_id, *ids)


class SimilarityIndex:
    """Every report embedding of each model, in memory, refreshed from the database by id.

    One per process (held by the Hub): a filing reads only the rows added since the last
    one, instead of every embedding. Whether a neighbour is still open is asked of the
    database for the few candidates within the distance, so closing a report needs no
    cache invalidation.
    """

    def __init__(self) -> None:
        self._models: dict[int, _Vectors] = {}
        self._lock = threading.Lock()

    def refresh(self, session: Session, model_ids: Iterable[int]) -> None:
        from upstream.embeddings import from_bytes

        with self._lock:
            for model_id in set(model_ids):
                vectors = self._models.setdefault(model_id, _Vectors())
                rows = session.execute(
                    select(Report.id, Report.embedding)
                    .where(
                        Report.model_id == model_id,
                        Report.id > vectors.last_id,
                        Report.embedding.is_not(None),
                    )
                    .order_by(Report.id)
                ).all()
                if rows:
                    vectors.append(
                        [r[0] for r in rows], [from_bytes(cast(bytes, r[1])) for r in rows]
                    )

    def distances(self, model_id: int, vectors: Sequence[np.ndarray]) -> Distances:
        """The distances of the model's reports to each of `vectors` (k of (d,)), for
        `nearest`: one pass over the stored matrix for a whole batch of filings, which
        reads it from memory once instead of once per filing (28 MB at 18,000 reports)."""
        with self._lock:
            v = self._models.get(model_id) or _Vectors()
            return v.ids[: v.n], 1.0 - v.matrix[: v.n] @ np.stack(vectors).T  # (n,), (n, k)

    def nearest(
        self,
        session: Session,
        stored: tuple[np.ndarray, np.ndarray],
        vector: np.ndarray,
        max_distance: float,
        pending: Sequence[tuple[int, np.ndarray]] = (),
        k: int = 100,
    ) -> tuple[int, float] | None:
        """The closest open report within `max_distance` of `vector`, if any.

        `stored` are the ids of the model's stored reports and their distances to
        `vector` (a column of `distances`); `pending` are (id, vector) of the model's
        reports added in the current, uncommitted filing.
        """
        ids, distances = stored  # (n,), (n,)
        if pending:
            ids = np.concatenate([ids, [p[0] for p in pending]])
            distances = np.concatenate(
                [distances, 1.0 - np.stack([p[1] for p in pending]) @ vector]
            )
        close_enough = np.flatnonzero(distances <= max_distance)
        if close_enough.size == 0:
            return None
        order = close_enough[np.argsort(distances[close_enough])][:k]
        candidates = [int(ids[i]) for i in order]
        open_ids = set(
            session.scalars(
                select(Report.id).where(
                    Report.id.in_(candidates), Report.status.not_in(CLOSED_STATUSES)
                )
            )
        )
        for i in order:
            if int(ids[i]) in open_ids:
                return int(ids[i]), round(float(max(0.0, distances[i])), 4)
        return None
