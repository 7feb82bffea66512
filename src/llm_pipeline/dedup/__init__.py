"""The load-and-deduplicate stage's dedup half: identify duplicate clusters by method, then remove them.

`hybrid` runs exact, then MinHash on what exact kept, then semantic on what MinHash kept, so each (costlier)
method sees fewer documents.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llm_pipeline.config import DedupConfig
from llm_pipeline.dedup.clusters import remove_duplicates
from llm_pipeline.dedup.exact import exact_duplicate_clusters
from llm_pipeline.dedup.minhash import near_duplicate_clusters
from llm_pipeline.dedup.semantic import semantic_duplicate_clusters
from llm_pipeline.logging import get_logger
from llm_pipeline.records import Document, DuplicateCluster

log = get_logger("dedup")

METHOD_ORDER = {
    "exact": ["exact"],
    "minhash": ["minhash"],
    "semantic": ["semantic"],
    "hybrid": ["exact", "minhash", "semantic"],
}


@dataclass
class DedupResult:
    kept: list[Document]
    clusters: list[DuplicateCluster] = field(default_factory=list)
    removed_by_method: dict[str, int] = field(default_factory=dict)

    def counts(self, total: int) -> dict[str, float]:
        removed = total - len(self.kept)
        return {
            "input": total,
            "kept": len(self.kept),
            "removed": removed,
            "clusters": len(self.clusters),
            "dedup_rate": round(removed / total, 4) if total else 0.0,
            **{f"removed.{m}": n for m, n in self.removed_by_method.items()},
        }


def find_clusters(documents: list[Document], method: str, config: DedupConfig) -> list[DuplicateCluster]:
    if method == "exact":
        return exact_duplicate_clusters(documents, config.keep)
    if method == "minhash":
        return near_duplicate_clusters(
            documents,
            config.jaccard_threshold,
            config.shingle_size,
            config.num_perm,
            config.keep,
            bands=config.bands,
            verify=config.verify,
            redis_url=config.redis_url if config.index == "redis" else None,
            redis_basename=config.redis_basename,
        )
    if method == "semantic":
        return semantic_duplicate_clusters(
            documents,
            config.cosine_threshold,
            config.embedding_model,
            config.device,
            config.batch_size,
            config.keep,
            backend=config.embedding_backend,
            max_seq_length=config.max_seq_length,
            cache=config.embedding_cache,
        )
    raise ValueError(f"unknown dedup method {method!r}")


def deduplicate(documents: list[Document], config: DedupConfig) -> DedupResult:
    result = DedupResult(kept=list(documents))
    for method in METHOD_ORDER[config.method]:
        clusters = find_clusters(result.kept, method, config)
        before = len(result.kept)
        result.kept = remove_duplicates(result.kept, clusters)
        result.clusters.extend(clusters)
        result.removed_by_method[method] = before - len(result.kept)
        log.info(
            "dedup_method_done",
            method=method,
            clusters=len(clusters),
            removed=before - len(result.kept),
            remaining=len(result.kept),
        )
    return result
