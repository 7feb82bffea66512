"""Near duplicates by MinHash LSH (datasketch): word shingles, banded LSH, candidates verified before removal."""

from __future__ import annotations

import re

from datasketch import LeanMinHash, MinHash, MinHashLSH

from llm_pipeline.dedup.clusters import KeepPolicy, clusters_from_pairs
from llm_pipeline.records import Document, DuplicateCluster

_WORD = re.compile(r"\w+")


def shingles(text: str, size: int) -> set[bytes]:
    """Word n-grams of the lowercased text; a text shorter than n words is one shingle."""
    words = _WORD.findall(text.lower())
    if len(words) <= size:
        return {" ".join(words).encode()}
    return {" ".join(words[i : i + size]).encode() for i in range(len(words) - size + 1)}


def signatures(documents: list[Document], shingle_size: int, num_perm: int, seed: int = 1) -> list[LeanMinHash]:
    """One MinHash per document, computed with datasketch's batch API (one vectorized update per document)."""
    batches = [list(shingles(d.text, shingle_size)) for d in documents]
    return [LeanMinHash(m) for m in MinHash.bulk(batches, num_perm=num_perm, seed=seed)]


def near_duplicate_clusters(
    documents: list[Document], threshold: float, shingle_size: int = 3, num_perm: int = 128, keep: KeepPolicy = "first"
) -> list[DuplicateCluster]:
    """LSH finds candidate pairs; a pair joins a cluster only if its estimated Jaccard reaches `threshold`."""
    if len(documents) < 2:
        return []
    hashes = signatures(documents, shingle_size, num_perm)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    pairs: list[tuple[int, int, float]] = []
    for index, signature in enumerate(hashes):
        for candidate in lsh.query(signature):
            similarity = signature.jaccard(hashes[candidate])
            if similarity >= threshold:
                pairs.append((candidate, index, similarity))
        lsh.insert(index, signature)
    return clusters_from_pairs(documents, pairs, "minhash", keep)
