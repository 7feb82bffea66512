"""Turn similar pairs into duplicate clusters and choose the member to keep (remove.py acts on them)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from llm_pipeline.records import Document, DuplicateCluster

KeepPolicy = Literal["first", "longest", "richest_metadata"]


class UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _keep_key(policy: KeepPolicy, index: int, document: Document) -> tuple[float, ...]:
    """Smaller is better; input order breaks every tie, so the choice is deterministic."""
    if policy == "longest":
        return (-len(document.text), index)
    if policy == "richest_metadata":
        return (-sum(1 for v in document.metadata.values() if v not in (None, "", [], {})), index)
    return (index,)


def clusters_from_pairs(
    documents: list[Document], pairs: Iterable[tuple[int, int, float]], method: str, keep: KeepPolicy = "first"
) -> list[DuplicateCluster]:
    """Connected components of the similarity graph; each one's lowest joining similarity is recorded."""
    union = UnionFind()
    lowest: dict[int, float] = {}
    edges = list(pairs)
    for a, b, _ in edges:
        union.union(a, b)
    for a, _, similarity in edges:
        root = union.find(a)
        lowest[root] = min(lowest.get(root, 1.0), similarity)
    groups: dict[int, list[int]] = {}
    for node in union.parent:
        groups.setdefault(union.find(node), []).append(node)
    clusters = []
    for root, members in sorted(groups.items()):
        if len(members) < 2:
            continue
        members.sort()
        kept = min(members, key=lambda i: _keep_key(keep, i, documents[i]))
        clusters.append(
            DuplicateCluster(
                cluster_id=f"{method}-{documents[members[0]].id}",
                method=method,
                kept=documents[kept].id,
                members=[documents[i].id for i in members],
                similarity=round(lowest.get(root, 1.0), 4),
            )
        )
    return clusters
