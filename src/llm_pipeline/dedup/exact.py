"""Exact duplicates: the same words in the same order after normalization, ignoring case and how the text is
spaced and wrapped (the lowercasing and the one space between words are for hashing only; a kept text keeps its
lines)."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from llm_pipeline.dedup.clusters import KeepPolicy, clusters_from_pairs
from llm_pipeline.dedup.methods import DEDUP_METHODS
from llm_pipeline.records import Document, DuplicateCluster

if TYPE_CHECKING:
    from llm_pipeline.config import DedupConfig


def hashing_digest(text: str) -> bytes:
    """The text's 32-byte exact-dedup key: its words, lowercased, joined by single spaces (the Ray engine's too)."""
    return hashlib.sha256(" ".join(text.lower().split()).encode("utf-8")).digest()


def hashing_key(text: str) -> str:
    return hashing_digest(text).hex()


def exact_duplicate_clusters(documents: list[Document], keep: KeepPolicy = "first") -> list[DuplicateCluster]:
    first_by_hash: dict[str, int] = {}
    pairs = []
    for index, document in enumerate(documents):
        key = hashing_key(document.text)
        if key in first_by_hash:
            pairs.append((first_by_hash[key], index, 1.0))
        else:
            first_by_hash[key] = index
    return clusters_from_pairs(documents, pairs, "exact", keep)


@DEDUP_METHODS.register("exact")
def exact_method(documents: list[Document], config: DedupConfig) -> list[DuplicateCluster]:
    return exact_duplicate_clusters(documents, config.keep)
