"""Duplicate reports: the same content filed twice, and reports close in meaning.

Exact repeats are found by the sha256 of the normalised content (model, revision,
messages case-folded with whitespace collapsed, variants, check). Likely duplicates are
found by embedding the user turns with all-MiniLM-L6-v2: a new report within
`duplicate_distance` (cosine distance) of an open report of the same model is linked to
the nearest one. Linked reports form clusters (connected components).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from upstream.db.schema import Report


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


@dataclass
class SimilarityIndex:
    """Embeddings of the open reports of some models, for nearest-neighbour lookups."""

    ids: dict[int, list[int]] = field(default_factory=dict)
    vectors: dict[int, list[np.ndarray]] = field(default_factory=dict)

    @classmethod
    def load(cls, session: Session, model_ids: Iterable[int]) -> SimilarityIndex:
        from upstream.embeddings import from_bytes
        from upstream.reports import CLOSED

        index = cls()
        models = sorted(set(model_ids))
        if not models:
            return index
        rows = session.execute(
            select(Report.model_id, Report.id, Report.embedding).where(
                Report.model_id.in_(models),
                Report.status.not_in(CLOSED),
                Report.embedding.is_not(None),
            )
        )
        for model_id, rid, blob in rows:
            if blob is not None:
                index.add(model_id, rid, from_bytes(blob))
        return index

    def add(self, model_id: int, report_id: int, vector: np.ndarray) -> None:
        self.ids.setdefault(model_id, []).append(report_id)
        self.vectors.setdefault(model_id, []).append(vector)

    def nearest(
        self, model_id: int, vector: np.ndarray, max_distance: float
    ) -> tuple[int, float] | None:
        """The closest open report of the model within `max_distance`, if any."""
        if not self.ids.get(model_id):
            return None
        matrix = np.stack(self.vectors[model_id])  # (n, 384)
        distances = 1.0 - matrix @ vector  # rows are unit vectors
        best = int(np.argmin(distances))
        distance = float(max(0.0, distances[best]))
        if distance > max_distance:
            return None
        return self.ids[model_id][best], round(distance, 4)


def clusters(reports: Sequence[Report]) -> list[dict[str, Any]]:
    """Group reports linked as likely duplicates; biggest clusters first."""
    parent = {r.id: r.id for r in reports}

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for r in reports:
        for other in (r.similar_to_id, r.duplicate_of_id):
            if other is not None and other in parent:
                parent[root(r.id)] = root(other)
    groups: dict[int, list[Report]] = defaultdict(list)
    for r in reports:
        groups[root(r.id)].append(r)
    out: list[dict[str, Any]] = []
    for members in groups.values():
        members.sort(key=lambda r: r.id)
        first = members[0]
        users = [m["content"] for m in first.messages if m["role"] == "user"]
        out.append(
            {
                "id": first.id,
                "size": len(members),
                "reporters": len({f.reporter for m in members for f in m.filings}),
                "reports": [m.id for m in members],
                "statuses": sorted({m.status for m in members}),
                "prompt": users[-1] if users else "",
            }
        )
    out.sort(key=lambda c: (-int(c["size"]), int(c["id"])))
    return out
