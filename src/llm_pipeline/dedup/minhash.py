"""Near duplicates by MinHash LSH: signatures, then bands, then candidate pairs verified before removal.

Signatures are computed for many documents at once in numpy, not shingle by shingle:
  words -> 32-bit xxhash per distinct word (cached), shingle hash = a rolling mix of its k word hashes,
  premixed with MurmurHash3's 32-bit finalizer; permutation p of hash h = (a_p * h + b_p) mod 2^32 with a_p
  odd (a bijection: datasketch 2's "affine32" scheme), computed in uint32 where the wraparound is the modulo;
  signature = the minimum per permutation, taken for a whole batch with np.minimum.reduceat.
Banding (b bands of r rows; by default datasketch's optimum for the threshold, weighted toward recall since
every candidate is verified) groups rows with equal band keys; a candidate pair joins a cluster only if its
Jaccard reaches the threshold: the signature estimate (`verify: estimated`) or the true Jaccard of the
shingle sets (`verify: exact`).
The index can live in Redis through datasketch's storage backend (`index: redis`), so workers that process
parts of a corpus share one index; signatures are the same in every process (no per-process salt).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import xxhash

from llm_pipeline.dedup.clusters import KeepPolicy, clusters_from_pairs
from llm_pipeline.dedup.methods import DEDUP_METHODS
from llm_pipeline.records import Document, DuplicateCluster
from llm_pipeline.text import words_of

if TYPE_CHECKING:
    from llm_pipeline.config import DedupConfig

_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant for the rolling shingle mix
BATCH_SHINGLES = 1 << 16  # shingles per vectorized batch: num_perm x this many uint32 values at a time
MAX_BUCKET_PAIRS = 500  # a bucket larger than this links each member to its neighbours only (boilerplate)


def shingles(text: str, size: int) -> set[bytes]:
    """Word n-grams of the lowercased text; a text shorter than n words is one shingle (for exact Jaccard)."""
    words = words_of(text)
    if len(words) <= size:
        return {" ".join(words).encode()}
    return {" ".join(words[i : i + size]).encode() for i in range(len(words) - size + 1)}


def jaccard(a: set[bytes], b: set[bytes]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


@lru_cache(maxsize=8)
def permutations(num_perm: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(seed)
    a = rng.randint(0, 2**32, size=num_perm, dtype=np.int64).astype(np.uint32) | np.uint32(1)
    b = rng.randint(0, 2**32, size=num_perm, dtype=np.int64).astype(np.uint32)
    return a, b


def fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's finalizer: a bijection on 32 bits that spreads structured inputs."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


class ShingleHasher:
    """Stable 32-bit hashes of word shingles; word hashes are cached (a corpus has far fewer words than tokens)."""

    def __init__(self, size: int):
        self.size = size
        self._word_hash: dict[str, int] = {}

    def __call__(self, text: str) -> np.ndarray:
        cache = self._word_hash
        ids = []
        for word in words_of(text):
            value = cache.get(word)
            if value is None:
                value = cache[word] = xxhash.xxh32_intdigest(word.encode())
            ids.append(value)
        words = np.asarray(ids, dtype=np.uint64)
        if len(words) == 0:
            return np.zeros(1, dtype=np.uint32)
        k = min(self.size, len(words))
        count = len(words) - k + 1
        mixed = np.zeros(count, dtype=np.uint64)
        for j in range(k):
            mixed = (mixed * _MIX) ^ words[j : j + count]
        return ((mixed >> np.uint64(32)) ^ (mixed & np.uint64(0xFFFFFFFF))).astype(np.uint32)


PARALLEL_MIN_DOCUMENTS = 4000  # below this, starting processes costs more than it saves


def signatures(
    texts: Iterable[str], shingle_size: int = 3, num_perm: int = 128, seed: int = 1, processes: int | None = None
) -> np.ndarray:
    """One row of `num_perm` uint32 minimums per text. Large inputs are split over processes (default: the
    CPUs this process may use); the result does not depend on how many."""
    texts = list(texts)
    if processes is None:
        processes = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if processes > 1 and len(texts) >= PARALLEL_MIN_DOCUMENTS:
        import multiprocessing

        chunk = -(-len(texts) // processes)
        parts = [texts[i : i + chunk] for i in range(0, len(texts), chunk)]
        with multiprocessing.get_context("fork").Pool(len(parts)) as pool:
            results = pool.starmap(_signatures, [(part, shingle_size, num_perm, seed) for part in parts])
        return np.vstack(results)
    return _signatures(texts, shingle_size, num_perm, seed)


def _signatures(texts: list[str], shingle_size: int, num_perm: int, seed: int) -> np.ndarray:
    a, b = permutations(num_perm, seed)
    hasher = ShingleHasher(shingle_size)
    rows: list[np.ndarray] = []
    for batch in _batches(map(hasher, texts)):
        lengths = np.fromiter((len(h) for h in batch), dtype=np.int64, count=len(batch))
        flat = fmix32(np.concatenate(batch))
        permuted = a[:, None] * flat[None, :] + b[:, None]  # uint32: wraps modulo 2^32
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        rows.append(np.ascontiguousarray(np.minimum.reduceat(permuted, starts, axis=1).T))
    return np.vstack(rows) if rows else np.zeros((0, num_perm), dtype=np.uint32)


def _batches(hashes: Iterator[np.ndarray]) -> Iterator[list[np.ndarray]]:
    batch: list[np.ndarray] = []
    size = 0
    for h in hashes:
        batch.append(h)
        size += len(h)
        if size >= BATCH_SHINGLES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def lsh_params(threshold: float, num_perm: int, bands: int | None = None) -> tuple[int, int]:
    """(bands, rows): given bands, rows = num_perm // bands; else datasketch's optimum, weighted to recall."""
    if bands:
        return bands, num_perm // bands
    from datasketch.lsh import _optimal_param

    return _optimal_param(threshold, num_perm, 0.1, 0.9)


def band_keys(sigs: np.ndarray, band: int, rows: int) -> np.ndarray:
    """One uint64 key per document for a band: its rows mixed together (a collision only adds a candidate,
    which verification then rejects)."""
    keys = np.zeros(len(sigs), dtype=np.uint64)
    for column in sigs[:, band * rows : (band + 1) * rows].T:
        keys = (keys ^ column.astype(np.uint64)) * _MIX
    return keys


def candidate_pairs(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """Unique (i, j), i < j, of rows that share at least one band key; shape (n, 2)."""
    n = len(sigs)
    found: list[np.ndarray] = []
    for band in range(bands):
        keys = band_keys(sigs, band, rows)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        boundaries = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
        starts = np.concatenate(([0], boundaries))
        ends = np.concatenate((boundaries, [n]))
        sizes = ends - starts
        two = starts[sizes == 2]  # the common case, done for all such buckets at once
        if len(two):
            found.append(np.sort(np.stack([order[two], order[two + 1]], axis=1), axis=1))
        larger = sizes > 2
        for start, end in zip(starts[larger].tolist(), ends[larger].tolist(), strict=True):
            group = np.sort(order[start:end])
            if len(group) * (len(group) - 1) // 2 <= MAX_BUCKET_PAIRS:
                i, j = np.triu_indices(len(group), k=1)
                found.append(np.stack([group[i], group[j]], axis=1))
            else:  # a huge bucket: chain neighbours, which keeps it connected without a quadratic blow-up
                found.append(np.stack([group[:-1], group[1:]], axis=1))
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.concatenate(found).astype(np.int64)
    codes = np.unique(pairs[:, 0] * n + pairs[:, 1])
    return np.stack([codes // n, codes % n], axis=1)


def verified_pairs(
    documents: list[Document], sigs: np.ndarray, pairs: np.ndarray, threshold: float, verify: str, shingle_size: int
) -> list[tuple[int, int, float]]:
    if len(pairs) == 0:
        return []
    if verify == "exact":
        cache: dict[int, set[bytes]] = {}

        def sh(i: int) -> set[bytes]:
            if i not in cache:
                cache[i] = shingles(documents[i].text, shingle_size)
            return cache[i]

        scored = [(int(i), int(j), jaccard(sh(int(i)), sh(int(j)))) for i, j in pairs]
        return [(i, j, s) for i, j, s in scored if s >= threshold]
    estimates = (sigs[pairs[:, 0]] == sigs[pairs[:, 1]]).mean(axis=1)
    keep = estimates >= threshold
    return [(int(i), int(j), float(s)) for (i, j), s in zip(pairs[keep], estimates[keep], strict=True)]


class RedisIndex:
    """datasketch's Redis-backed MinHashLSH plus the signatures, shared by every worker using `basename`.
    It holds kept documents only: a document matching one indexed earlier (by any worker, or by an earlier run)
    is its duplicate, and the earlier one is kept. Two workers indexing copies of each other at the same moment
    can both keep theirs: each deduplicates against what was indexed before it queried."""

    def __init__(self, redis_url: str, basename: str, threshold: float, num_perm: int, bands: int, rows: int):
        from urllib.parse import urlparse

        import redis
        from datasketch import MinHashLSH

        url = urlparse(redis_url)
        host, port, db = url.hostname or "localhost", url.port or 6379, int((url.path or "/0").lstrip("/") or 0)
        storage = {"type": "redis", "basename": basename.encode(), "redis": {"host": host, "port": port, "db": db}}
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, params=(bands, rows), storage_config=storage)
        self.redis = redis.Redis(host=host, port=port, db=db)
        self.signature_key = f"{basename}:signatures"

    @staticmethod
    def _lean(row: np.ndarray):  # type: ignore[no-untyped-def]
        from datasketch import LeanMinHash

        # 32-bit affine values, as datasketch's "affine32" scheme stores them (the index only compares them)
        return LeanMinHash(seed=1, hashvalues=row.astype(np.uint32), scheme="affine32")

    def indexed(self, ids: list[str]) -> set[str]:
        with self.redis.pipeline() as pipe:
            for doc_id in ids:
                pipe.hexists(self.signature_key, doc_id)
            return {doc_id for doc_id, found in zip(ids, pipe.execute(), strict=True) if found}

    def earlier_matches(
        self, ids: list[str], sigs: np.ndarray, threshold: float, earlier: set[str]
    ) -> list[DuplicateCluster]:
        """Documents of this batch that duplicate an indexed one, verified on the stored signatures."""
        clusters = []
        for k, doc_id in enumerate(ids):
            if doc_id in earlier:
                continue  # already indexed: it is the one kept
            best: tuple[float, str] | None = None
            for hit in self.lsh.query(self._lean(sigs[k])):
                other = hit.decode() if isinstance(hit, bytes) else str(hit)
                raw = self.redis.hget(self.signature_key, other)
                if other == doc_id or raw is None:
                    continue
                similarity = float((sigs[k] == np.frombuffer(raw, dtype=np.uint32)).mean())
                if similarity >= threshold and (best is None or similarity > best[0]):
                    best = (similarity, other)
            if best is not None:
                clusters.append(
                    DuplicateCluster(
                        cluster_id=f"minhash-{best[1]}",
                        method="minhash",
                        kept=best[1],
                        members=[best[1], doc_id],
                        similarity=round(best[0], 4),
                    )
                )
        return clusters

    def insert(self, ids: list[str], sigs: np.ndarray) -> None:
        with self.lsh.insertion_session() as session:
            for doc_id, row in zip(ids, sigs, strict=True):
                session.insert(doc_id, self._lean(row), check_duplication=False)
        with self.redis.pipeline() as pipe:
            for doc_id, row in zip(ids, sigs, strict=True):
                pipe.hset(self.signature_key, doc_id, row.astype(np.uint32).tobytes())
            pipe.execute()


def near_duplicate_clusters(
    documents: list[Document],
    threshold: float,
    shingle_size: int = 3,
    num_perm: int = 128,
    keep: KeepPolicy = "first",
    bands: int | None = None,
    verify: str = "estimated",
    redis_url: str | None = None,
    redis_basename: str = "llm-pipeline-lsh",
) -> list[DuplicateCluster]:
    if len(documents) < 2:
        return []
    sigs = signatures((d.text for d in documents), shingle_size, num_perm)
    b, r = lsh_params(threshold, num_perm, bands)
    pairs = candidate_pairs(sigs, b, r)
    if not redis_url:
        verified = verified_pairs(documents, sigs, pairs, threshold, verify, shingle_size)
        return clusters_from_pairs(documents, verified, "minhash", keep)
    index = RedisIndex(redis_url, redis_basename, threshold, num_perm, b, r)
    ids = [d.id for d in documents]
    earlier = index.indexed(ids)
    external = index.earlier_matches(ids, sigs, threshold, earlier)
    matched = {c.members[1] for c in external}
    # Within the batch, documents already indexed or already matched take no part: they are settled.
    settled = earlier | matched
    local = np.asarray(
        [(i, j) for i, j in pairs.tolist() if ids[i] not in settled and ids[j] not in settled], dtype=np.int64
    ).reshape(-1, 2)
    clusters = clusters_from_pairs(
        documents, verified_pairs(documents, sigs, local, threshold, verify, shingle_size), "minhash", keep
    )
    removed = matched | {m for c in clusters for m in c.members if m != c.kept}
    fresh = [k for k, doc_id in enumerate(ids) if doc_id not in removed and doc_id not in earlier]
    index.insert([ids[k] for k in fresh], sigs[fresh])
    return external + clusters


@DEDUP_METHODS.register("minhash")
def minhash_method(documents: list[Document], config: DedupConfig) -> list[DuplicateCluster]:
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
