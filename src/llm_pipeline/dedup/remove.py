"""Acting on identified duplicate clusters: the documents that remain."""

from __future__ import annotations

from llm_pipeline.records import Document, DuplicateCluster


def remove_duplicates(documents: list[Document], clusters: list[DuplicateCluster]) -> list[Document]:
    """Acting on identified clusters: drop every member but the kept one. Order is preserved."""
    dropped = {m for c in clusters for m in c.members if m != c.kept}
    return [d for d in documents if d.id not in dropped]
