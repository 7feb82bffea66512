"""Near duplicates by MinHash LSH: signatures, then bands, then candidate pairs verified before removal.

Signatures are computed for many documents at once in numpy, not shingle by shingle:
  words -> 32-bit xxhash per distinct word (cached), shingle hash = a rolling mix of its k word hashes,
  premixed with MurmurHash3's 32-bit finalizer; permutation p of hash h = (a_p * h + b_p) mod 2^32 with a_p
  odd (a bijection: datasketch 2's "affine32" scheme), computed in uint32 where the wraparound is the modulo;
  signature = the minimum per permutation, taken for a whole batch with np.minimum.reduceat.
Words are `text.dedup_tokens` (symbols that change meaning kept: `c++` is not `c`).
Banding (b bands of r rows; by default datasketch's optimum for the threshold, weighted toward recall since
every candidate is verified) groups rows with equal band keys; a candidate pair counts only if its Jaccard
reaches the threshold: by default the exact Jaccard of the two shingle sets (`verify: exact`), or the signature
estimate (`verify: estimated`, faster, and wrong by +-0.05 or more on short texts). Removal follows the
kept-document rule (clusters.clusters_by_kept): a document goes only as the copy of a kept one, never by a chain.
The index can live in Redis through datasketch's storage backend (`index: redis`), so workers that process
parts of a corpus share one index; signatures are the same in every process (no per-process salt).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from functools import lru_cache
from itertools import chain
from typing import TYPE_CHECKING

import numpy as np
import xxhash

from llm_pipeline.dedup.clusters import KeepPolicy, clusters_by_kept, keep_ranks
from llm_pipeline.dedup.methods import DEDUP_METHODS
from llm_pipeline.records import Document, DuplicateCluster
from llm_pipeline.text import DEDUP_EDGE, dedup_tokens, dedup_words

if TYPE_CHECKING:
    from llm_pipeline.config import DedupConfig

_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant for the rolling shingle mix
_MIX_INT, _MASK64 = int(_MIX), (1 << 64) - 1
BATCH_SHINGLES = 1 << 16  # shingles per vectorized batch: num_perm x this many uint32 values at a time
MAX_BUCKET_PAIRS = 500  # a bucket larger than this links its members to a few anchors only (boilerplate)
BUCKET_ANCHORS = 4  # in such a bucket, the members first in keep order: each member is compared with these


def shingles(text: str, size: int) -> set[bytes]:
    """Word n-grams of the lowercased text (`dedup_tokens`); a text shorter than n words is one shingle."""
    words = dedup_tokens(text)
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


class _ChunkHashes(dict):
    """A whitespace-separated chunk of lowercased text -> the 64-bit hashes (xxhash64) of its `dedup_words`: one,
    none where the chunk was punctuation only, one per character in a script written without spaces. A corpus
    repeats its chunks, so the split and the hashes run once per distinct chunk."""

    def __missing__(self, chunk: str) -> tuple[int, ...]:
        if chunk.isascii():  # nearly every chunk: `dedup_words` of it, inline (this runs once per distinct chunk)
            word = chunk.strip(DEDUP_EDGE)
            value = self[chunk] = (xxhash.xxh64_intdigest(word.encode()),) if word else ()
        else:
            value = self[chunk] = tuple(xxhash.xxh64_intdigest(word.encode()) for word in dedup_words(chunk))
        return value


class ShingleHasher:
    """Stable 64-bit hashes of word shingles, for many texts at once: each text is split on whitespace and its
    chunks' word hashes looked up in a cache (`_ChunkHashes`: each distinct chunk stripped and hashed once, not
    once per text), all in C-level passes; the k-word windows are then mixed in numpy over the whole batch,
    windows that cross a text's end dropped. A text shorter than k words is one shingle."""

    MAX_CACHED_CHUNKS = 2_000_000  # the cache starts again past this (a few hundred MB at most)

    def __init__(self, size: int):
        self.size = size
        self._chunks = _ChunkHashes()

    def batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(hashes, offsets): text t's shingle hashes are hashes[offsets[t]:offsets[t + 1]] (uint64)."""
        if len(self._chunks) > self.MAX_CACHED_CHUNKS:
            self._chunks = _ChunkHashes()
        get = self._chunks.__getitem__
        per_text = [list(chain.from_iterable(map(get, text.lower().split()))) for text in texts]
        counts = np.fromiter(map(len, per_text), dtype=np.int64, count=len(per_text))
        words = np.fromiter(chain.from_iterable(per_text), dtype=np.uint64, count=int(counts.sum()))
        k = self.size
        starts = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
        windows = np.maximum(counts - k + 1, 0)
        full = len(words) - k + 1
        mixed = np.zeros(max(full, 0), dtype=np.uint64)
        for j in range(k):
            mixed = (mixed * _MIX) ^ words[j : j + len(mixed)]
        # window w of text t starts at word starts[t] + w and lands in slot offsets[t] + w; a text shorter than
        # k words has no window and one slot (filled below)
        per_text = np.where(windows > 0, windows, 1)
        offsets = np.concatenate(([0], np.cumsum(per_text))).astype(np.int64)
        within = np.arange(int(windows.sum())) - np.repeat(np.cumsum(windows) - windows, windows)
        hashes = np.empty(int(per_text.sum()), dtype=np.uint64)
        hashes[np.repeat(offsets[:-1], windows) + within] = mixed[np.repeat(starts, windows) + within]
        long_enough = windows > 0
        for t in np.flatnonzero(~long_enough).tolist():  # shorter than k words: all of it is one shingle
            value = 0  # the same mix as above, in Python ints wrapped to 64 bits (numpy scalars warn on overflow)
            for word in words[starts[t] : starts[t] + counts[t]].tolist():
                value = ((value * _MIX_INT) & _MASK64) ^ word
            hashes[offsets[t]] = value
        return hashes, offsets


class ShingleSets:
    """Each text's set of shingle hashes (64-bit: two distinct shingles of a pair share a hash with a chance of
    about 1 in 10^14), for the exact Jaccard that verifies a candidate pair."""

    def __init__(self, hashes: np.ndarray, offsets: np.ndarray, alias: list[int] | None = None):
        self.hashes, self.offsets = hashes, offsets
        self.alias = alias  # text index -> index of its hashes (identical texts share one)
        self._sets: dict[int, np.ndarray] = {}

    def of(self, i: int) -> np.ndarray:
        found = self._sets.get(i)
        if found is None:
            found = self._sets[i] = np.unique(self.hashes[self.offsets[i] : self.offsets[i + 1]])
        return found

    def jaccard(self, i: int, j: int) -> float:
        if self.alias is not None:
            i, j = self.alias[i], self.alias[j]
        if i == j:
            return 1.0
        return set_jaccard(self.of(i), self.of(j))


def fold32(hashes: np.ndarray) -> np.ndarray:
    """64-bit shingle hashes to the 32 bits the permutations work in, spread by MurmurHash3's finalizer."""
    return fmix32(((hashes >> np.uint64(32)) ^ (hashes & np.uint64(0xFFFFFFFF))).astype(np.uint32))


PARALLEL_MIN_DOCUMENTS = 4000  # below this, starting processes costs more than it saves
BATCH_TEXTS = 2048  # texts hashed together: one numpy pass per batch


def signatures(
    texts: Iterable[str], shingle_size: int = 5, num_perm: int = 128, seed: int = 1, processes: int | None = None
) -> np.ndarray:
    """One row of `num_perm` uint32 minimums per text (see `shingle_signatures`)."""
    return shingle_signatures(texts, shingle_size, num_perm, seed, processes)[0]


def shingle_signatures(
    texts: Iterable[str], shingle_size: int = 5, num_perm: int = 128, seed: int = 1, processes: int | None = None
) -> tuple[np.ndarray, ShingleSets]:
    """Signatures, and the shingle sets they came from (for exact verification). Identical texts are hashed once
    (copied text is common: one docstring in 300 plug-ins). Large inputs are split over processes (default: the
    CPUs this process may use); the result does not depend on how many."""
    alias: list[int] = []
    first: dict[str, int] = {}
    unique: list[str] = []
    for text in texts:
        index = first.setdefault(text, len(unique))
        if index == len(unique):
            unique.append(text)
        alias.append(index)
    sigs, sets = _unique_signatures(unique, shingle_size, num_perm, seed, processes)
    sets.alias = alias
    return sigs[alias] if len(alias) else sigs, sets


def _unique_signatures(
    texts: list[str], shingle_size: int, num_perm: int, seed: int, processes: int | None
) -> tuple[np.ndarray, ShingleSets]:
    if processes is None:
        processes = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    parts = _balanced_parts(texts, processes) if processes > 1 and len(texts) >= PARALLEL_MIN_DOCUMENTS else []
    if len(parts) > 1:
        import multiprocessing

        # the children take the later parts while this process does the first: one fork fewer, and the largest
        # result never crosses a pipe
        with multiprocessing.get_context("fork").Pool(len(parts) - 1) as pool:
            later = pool.starmap_async(_signatures, [(part, shingle_size, num_perm, seed) for part in parts[1:]])
            results = [_signatures(parts[0], shingle_size, num_perm, seed), *later.get()]
    else:
        results = [_signatures(texts, shingle_size, num_perm, seed)]
    if not results:
        return np.zeros((0, num_perm), dtype=np.uint32), ShingleSets(np.zeros(0, np.uint64), np.zeros(1, np.int64))
    sigs = np.vstack([r[0] for r in results])
    hashes = np.concatenate([r[1] for r in results])
    ends = np.cumsum([len(r[1]) for r in results])
    offsets = np.concatenate([[0]] + [r[2][1:] + base for r, base in zip(results, [0, *ends[:-1]], strict=True)])
    return sigs, ShingleSets(hashes, offsets.astype(np.int64))


def _balanced_parts(texts: list[str], n: int) -> list[list[str]]:
    """`texts` cut into n contiguous parts of about equal characters (the work is per character, and a corpus's
    long texts cluster: equal counts left one process waiting a quarter of the time for the other)."""
    ends = np.cumsum(np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)))
    cuts = np.searchsorted(ends, ends[-1] * np.arange(1, n) / n).tolist()
    bounds = [0, *(min(max(c, 1), len(texts) - 1) for c in cuts), len(texts)]
    return [texts[lo:hi] for lo, hi in zip(bounds, bounds[1:], strict=False) if hi > lo]


def _signatures(texts: list[str], shingle_size: int, num_perm: int, seed: int) -> tuple[np.ndarray, ...]:
    a, b = permutations(num_perm, seed)
    hasher = ShingleHasher(shingle_size)
    rows: list[np.ndarray] = []
    all_hashes: list[np.ndarray] = []
    all_offsets: list[np.ndarray] = [np.zeros(1, dtype=np.int64)]
    done = 0
    buffer = np.empty(0, dtype=np.uint32)
    for start in range(0, len(texts), BATCH_TEXTS):
        hashes, offsets = hasher.batch(texts[start : start + BATCH_TEXTS])
        flat = fold32(hashes)
        for lo in range(0, len(offsets) - 1, 256):  # num_perm x (shingles of 256 texts) values at a time
            hi = min(lo + 256, len(offsets) - 1)
            part = flat[offsets[lo] : offsets[hi]]
            if len(buffer) < num_perm * len(part):  # one buffer, reused: fresh pages for every block cost more
                buffer = np.empty(num_perm * len(part), dtype=np.uint32)  # than the multiplication itself
            permuted = buffer[: num_perm * len(part)].reshape(num_perm, len(part))
            np.multiply.outer(a, part, out=permuted)  # uint32: wraps modulo 2^32
            permuted += b[:, None]
            rows.append(np.ascontiguousarray(np.minimum.reduceat(permuted, offsets[lo:hi] - offsets[lo], axis=1).T))
        all_hashes.append(hashes)
        all_offsets.append(offsets[1:] + done)
        done += len(hashes)
    sigs = np.vstack(rows) if rows else np.zeros((0, num_perm), dtype=np.uint32)
    hashes = np.concatenate(all_hashes) if all_hashes else np.zeros(0, dtype=np.uint64)
    return sigs, hashes, np.concatenate(all_offsets)


@lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int, bands: int | None = None) -> tuple[int, int]:
    """(bands, rows): given bands, rows = num_perm // bands; else the optimum datasketch's `_optimal_param`
    finds (false positives weighted 0.1, false negatives 0.9: recall first, as every candidate is verified),
    with its integrals done for every (b, r) at once in numpy rather than one by one (0.6 s to 5 ms)."""
    if bands:
        return bands, num_perm // bands
    grid = np.linspace(0.0, 1.0, 4001)
    best, best_error = (1, 1), float("inf")
    low, high = grid[grid <= threshold], grid[grid >= threshold]
    for b in range(1, num_perm + 1):
        rows = np.arange(1, num_perm // b + 1)[:, None]
        false_positive = np.trapezoid(1 - (1 - low[None, :] ** rows) ** b, low, axis=1)
        false_negative = np.trapezoid((1 - high[None, :] ** rows) ** b, high, axis=1)
        error = false_positive * 0.1 + false_negative * 0.9
        r = int(np.argmin(error))
        if error[r] < best_error:
            best, best_error = (b, r + 1), float(error[r])
    return best


def band_keys(sigs: np.ndarray, band: int, rows: int) -> np.ndarray:
    """One uint64 key per document for a band: its rows mixed together (a collision only adds a candidate,
    which verification then rejects)."""
    keys = np.zeros(len(sigs), dtype=np.uint64)
    for column in sigs[:, band * rows : (band + 1) * rows].T:
        keys = (keys ^ column.astype(np.uint64)) * _MIX
    return keys


def candidate_pairs(sigs: np.ndarray, bands: int, rows: int, ranks: np.ndarray | None = None) -> np.ndarray:
    """Unique (i, j), i < j, of rows that share at least one band key; shape (n, 2). A bucket too large for all
    its pairs (a docstring copied into 300 plug-ins) pairs each member with the bucket's BUCKET_ANCHORS first
    members in keep order (`ranks`; input order without): the kept-document rule then removes every copy of the
    one kept, where a chain of neighbours would keep every second one."""
    n = len(sigs)
    if ranks is None:
        ranks = np.arange(n)
    docs = np.arange(n)
    found = [part for band in range(bands) for part in bucket_pairs(band_keys(sigs, band, rows), docs, ranks)]
    return unique_pairs(found, n)


def bucket_pairs(keys: np.ndarray, docs: np.ndarray, ranks: np.ndarray) -> list[np.ndarray]:
    """The pairs of documents (`docs[k]` has band key `keys[k]`, one band) that share a key, as (m, 2) arrays in
    no order; a bucket larger than MAX_BUCKET_PAIRS allows pairs its members with its anchors only (`ranks`:
    keep order, indexed by document). The same pairs whatever the order of the rows: a shard's rows can arrive
    at a reducer in any order."""
    n = len(keys)
    if n < 2:
        return []
    order = np.argsort(keys, kind="stable")
    sorted_keys, sorted_docs = keys[order], docs[order]
    boundaries = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [n]))
    sizes = ends - starts
    small_limit = int((1 + np.sqrt(1 + 8 * MAX_BUCKET_PAIRS)) // 2)  # all pairs of up to this many members
    found: list[np.ndarray] = []
    for size in np.unique(sizes[(sizes >= 2) & (sizes <= small_limit)]).tolist():
        members = sorted_docs[starts[sizes == size][:, None] + np.arange(size)[None, :]]  # one row per bucket
        i, j = np.triu_indices(size, k=1)
        found.append(np.stack([members[:, i].ravel(), members[:, j].ravel()], axis=1))
    for start, end in zip(starts[sizes > small_limit].tolist(), ends[sizes > small_limit].tolist(), strict=True):
        # a huge bucket: anchors x the rest, no quadratic blow-up
        group = sorted_docs[start:end]
        group = group[np.lexsort((group, ranks[group]))]
        anchors, rest = group[:BUCKET_ANCHORS], group[BUCKET_ANCHORS:]
        i, j = np.triu_indices(len(anchors), k=1)
        found.append(np.stack([anchors[i], anchors[j]], axis=1))
        found.append(np.stack([np.repeat(anchors, len(rest)), np.tile(rest, len(anchors))], axis=1))
    return found


def unique_pairs(found: list[np.ndarray], n: int) -> np.ndarray:
    """Pair arrays (documents < n) as one sorted array of unique (i, j), i < j."""
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.sort(np.concatenate(found).astype(np.int64), axis=1)
    codes = np.unique(pairs[:, 0] * n + pairs[:, 1])
    return np.stack([codes // n, codes % n], axis=1)


BAND_ROW = np.dtype([("band", np.uint16), ("key", np.uint64), ("doc", np.int64)])


def band_rows(sigs: np.ndarray, docs: np.ndarray, bands: int, rows: int, partitions: int) -> list[np.ndarray]:
    """The map side of a distributed LSH: every (band, band key, document) row of these signatures, split into
    `partitions` arrays by its (band, key), so that each bucket lands whole in one partition."""
    n = len(sigs)
    out = np.empty(n * bands, dtype=BAND_ROW)
    for band in range(bands):
        block = out[band * n : (band + 1) * n]
        block["band"], block["key"], block["doc"] = band, band_keys(sigs, band, rows), docs
    spread = (out["key"] >> np.uint64(32)) ^ (out["band"].astype(np.uint64) * np.uint64(0x9E3779B1))
    target = (spread % np.uint64(partitions)).astype(np.int64)
    order = np.argsort(target, kind="stable")
    cuts = np.searchsorted(target[order], np.arange(1, partitions))
    return np.split(out[order], cuts)


def partition_pairs(parts: list[np.ndarray], ranks: np.ndarray, n: int) -> np.ndarray:
    """The reduce side: the candidate pairs of every bucket in one partition's rows (from every shard)."""
    rows = np.concatenate(parts) if parts else np.zeros(0, dtype=BAND_ROW)
    found: list[np.ndarray] = []
    for band in np.unique(rows["band"]).tolist():
        mine = rows[rows["band"] == band]
        found.extend(bucket_pairs(mine["key"], mine["doc"], ranks))
    return unique_pairs(found, n)


def set_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard of two sorted arrays of unique shingle hashes."""
    common = len(np.intersect1d(a, b, assume_unique=True))
    union = len(a) + len(b) - common
    return common / union if union else 1.0


def verified_pairs(
    documents: list[Document],
    sigs: np.ndarray,
    pairs: np.ndarray,
    threshold: float,
    verify: str,
    shingle_size: int,
    sets: ShingleSets | None = None,
) -> list[tuple[int, int, float]]:
    """The candidate pairs whose Jaccard reaches `threshold`, with it: exact (of the shingle sets; `sets` from
    `shingle_signatures`, else hashed here) or the signatures' estimate."""
    if len(pairs) == 0:
        return []
    if verify == "exact":
        confirm = exact_confirmation(documents, threshold, shingle_size, sets)
        scored = ((i, j, confirm(i, j)) for i, j, _ in hopeful_pairs(sigs, pairs, threshold))
        return [(i, j, s) for i, j, s in scored if s is not None]
    estimates = (sigs[pairs[:, 0]] == sigs[pairs[:, 1]]).mean(axis=1)
    keep = estimates >= threshold
    return [(int(i), int(j), float(s)) for (i, j), s in zip(pairs[keep], estimates[keep], strict=True)]


def hopeful_pairs(sigs: np.ndarray, pairs: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """The candidate pairs worth an exact count, with their estimates. A pair estimated 0.2 under the threshold
    (4.6 standard deviations at 128 permutations) is not: it cannot remove anything, and it reaches the threshold
    with a chance of about 1 in 10^6."""
    if len(pairs) == 0:
        return []
    estimates = (sigs[pairs[:, 0]] == sigs[pairs[:, 1]]).mean(axis=1)
    hopeful = estimates >= threshold - 0.2
    return list(zip(*pairs[hopeful].T.tolist(), estimates[hopeful].tolist(), strict=True))


def exact_confirmation(
    documents: list[Document], threshold: float, shingle_size: int, sets: ShingleSets | None = None
) -> Callable[[int, int], float | None]:
    """(i, j) -> the exact Jaccard of their shingle sets where it reaches `threshold`, else None (`sets` from
    `shingle_signatures`, else hashed here)."""
    if sets is None:
        sets = ShingleSets(*ShingleHasher(shingle_size).batch([d.text for d in documents]))
    jaccard = sets.jaccard

    def confirm(i: int, j: int) -> float | None:
        similarity = jaccard(i, j)
        return similarity if similarity >= threshold else None

    return confirm


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
    shingle_size: int = 5,
    num_perm: int = 128,
    keep: KeepPolicy = "first",
    bands: int | None = None,
    verify: str = "exact",
    redis_url: str | None = None,
    redis_basename: str = "llm-pipeline-lsh",
) -> list[DuplicateCluster]:
    if len(documents) < 2:
        return []
    sigs, sets = shingle_signatures((d.text for d in documents), shingle_size, num_perm)
    b, r = lsh_params(threshold, num_perm, bands)
    pairs = candidate_pairs(sigs, b, r, np.asarray(keep_ranks(documents, keep)))
    if not redis_url and verify == "exact":  # each pair counted only when it could remove something
        confirm = exact_confirmation(documents, threshold, shingle_size, sets)
        return clusters_by_kept(documents, hopeful_pairs(sigs, pairs, threshold), "minhash", keep, confirm)
    if not redis_url:
        verified = verified_pairs(documents, sigs, pairs, threshold, verify, shingle_size, sets)
        return clusters_by_kept(documents, verified, "minhash", keep)
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
    clusters = clusters_by_kept(
        documents, verified_pairs(documents, sigs, local, threshold, verify, shingle_size, sets), "minhash", keep
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
