"""Semantic duplicates: cosine similarity of sentence embeddings, compared block by block (bounded memory)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from llm_pipeline.dedup.clusters import KeepPolicy, clusters_by_kept
from llm_pipeline.dedup.methods import DEDUP_METHODS
from llm_pipeline.models.embeddings import Backend, embed
from llm_pipeline.records import Document, DuplicateCluster

if TYPE_CHECKING:
    from llm_pipeline.config import DedupConfig

BLOCK_ROWS = 1024  # a block's similarity matrix holds BLOCK_ROWS x N float32 values


def block_pairs(vectors: np.ndarray, start: int, threshold: float) -> list[tuple[int, int, float]]:
    """The pairs (i < j) with i in rows [start, start + BLOCK_ROWS) whose cosine reaches `threshold`: one block of
    the search, in (i, j) order (the Ray engine runs one task per block)."""
    pairs = []
    block = vectors[start : start + BLOCK_ROWS] @ vectors.T
    rows, cols = np.nonzero(block >= threshold)
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
        i = start + r
        if c > i:
            pairs.append((i, c, float(block[r, c])))
    return pairs


def similar_pairs(vectors: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """Every pair (i < j) of rows whose cosine reaches `threshold`; rows must be L2-normalized."""
    return [pair for start in range(0, len(vectors), BLOCK_ROWS) for pair in block_pairs(vectors, start, threshold)]


def comparable(vectors: np.ndarray, backend: Backend) -> np.ndarray:
    """The vectors as the similarity search compares them: static (bag-of-token) vectors share a corpus direction,
    so what is left of it is compared."""
    if backend != "static":
        return vectors
    vectors = vectors - vectors.mean(axis=0)
    return vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9, None)


def semantic_duplicate_clusters(
    documents: list[Document],
    threshold: float,
    model: str,
    device: str = "cpu",
    batch_size: int = 64,
    keep: KeepPolicy = "first",
    backend: Backend = "torch",
    max_seq_length: int = 128,
    cache: Path | None = None,
) -> list[DuplicateCluster]:
    if len(documents) < 2:
        return []
    vectors = embed([d.text for d in documents], model, device, batch_size, backend, max_seq_length, cache)
    return clusters_by_kept(documents, similar_pairs(comparable(vectors, backend), threshold), "semantic", keep)


@DEDUP_METHODS.register("semantic")
def semantic_method(documents: list[Document], config: DedupConfig) -> list[DuplicateCluster]:
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
