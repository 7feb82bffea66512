"""Semantic duplicates: cosine similarity of sentence embeddings, compared block by block (bounded memory).

Two searches find the pairs that reach the threshold. `exact` compares every pair (a block of rows against all):
n^2 dot products, fine to a few hundred thousand documents. `ivf` puts the vectors in faiss's inverted lists
(k-means cells; each row is compared only with the rows of the `ivf_probes` cells nearest to it): about
n^2 * probes / lists dot products, approximate (a pair whose two rows fall in cells far apart is missed; its
recall is measured in docs/benchmarks.md). `auto` is exact up to EXACT_SEARCH_MAX documents, ivf above.

The ivf index holds the vectors again: `flat` as float32 (4 bytes a dimension, 15 GB for 10M MiniLM vectors),
`sq8` as faiss's 8-bit scalar quantizer (1 byte a dimension). Either way every pair the index finds is re-scored
on the float vectors by `cosines`, as the exact search keeps its candidates: an ivf search reports only pairs that
reach the threshold by the exact search's own value, to the bit. A quantized inner product is off by up to ~0.002
on real vectors (measured: docs/benchmarks.md), so `sq8` is searched SQ8_MARGIN under the threshold; faiss's float32
products (flat) depend on the CPU's kernel and the batch like any BLAS product, so `flat` is searched RESCORE_MARGIN
under it: a pair on the threshold is in or out on every machine and engine alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from llm_pipeline.dedup.clusters import KeepPolicy, semantic_clusters
from llm_pipeline.dedup.methods import DEDUP_METHODS
from llm_pipeline.models.embeddings import Backend, embed
from llm_pipeline.records import Document, DuplicateCluster

if TYPE_CHECKING:
    from llm_pipeline.config import DedupConfig

BLOCK_ROWS = 1024  # a block's similarity matrix holds BLOCK_ROWS x N float32 values
EXACT_SEARCH_MAX = 100_000  # `auto`: all pairs up to here (83k: ~1 min on 2 cores, ivf 4.5x faster), ivf above
TRAIN_POINTS_PER_LIST = 64  # k-means sample per cell (faiss wants >= 39; its default 256 costs 4x the training)
DEFAULT_PROBES = 16
MEAN_CHUNK_ROWS = 65_536  # `corpus_mean` sums runs of this many rows in float64
SQ8_MARGIN = 0.01  # sq8: searched this far under the threshold (5x the largest quantization error measured)
RESCORE_MARGIN = 1e-4  # exact search: candidates this far under the threshold, each then kept on its `cosines`
# value (a float32 product of unit vectors is off by ~1e-7; at worst dimensions * 2**-24: 6.1e-5 for 1,024)

SemanticSearch = Literal["auto", "exact", "ivf"]
IvfCodec = Literal["flat", "sq8"]


def block_pairs(vectors: np.ndarray, start: int, threshold: float) -> list[tuple[int, int, float]]:
    """The pairs (i < j) with i in rows [start, start + BLOCK_ROWS) whose cosine reaches `threshold`: one block of
    the search, in (i, j) order."""
    return pairs_between(vectors[start : start + BLOCK_ROWS], start, vectors, 0, threshold)


def pairs_between(
    left: np.ndarray, left_start: int, right: np.ndarray, right_start: int, threshold: float
) -> list[tuple[int, int, float]]:
    """The pairs (i < j), i a row of `left` (rows from `left_start` on) and j one of `right` (from `right_start`),
    whose cosine reaches `threshold`, in (i, j) order: `left` taken BLOCK_ROWS rows at a time against all of
    `right` (the Ray engine searches its blocks of vectors two by two with it). A float32 matrix product finds the
    candidates, RESCORE_MARGIN under the threshold; each is then kept or not on its `cosines` value, which is the
    same to the bit whatever the matrices around it, so blocks give the whole search's pairs."""
    pairs: list[tuple[int, int, float]] = []
    for offset in range(0, len(left), BLOCK_ROWS):
        rows = left[offset : offset + BLOCK_ROWS]
        r, c = np.nonzero(rows @ right.T >= threshold - RESCORE_MARGIN)
        ahead = c + right_start > r + left_start + offset  # each pair once, as (i < j)
        r, c = r[ahead], c[ahead]
        similarities = cosines(rows[r], right[c])
        true = similarities >= threshold
        first, second = r[true] + left_start + offset, c[true] + right_start
        pairs += zip(first.tolist(), second.tolist(), similarities[true].tolist(), strict=True)
    return pairs


def cosines(left_rows: np.ndarray, right_rows: np.ndarray) -> np.ndarray:
    """Each row pair's dot product (row k of each), summed in float64 and rounded to float32: the same bits whatever
    the arrays around the rows or the BLAS's threads, and whatever the CPU but where a float64 sum lies within its
    own rounding error of a float32 rounding edge (about one pair in 10^8). A float32 matrix product's last bits
    depend on the shapes, the threads and the kernel the BLAS picks for the CPU (measured on an AMD EPYC: against
    2,048-row blocks 3.5 % of the products differed from the whole search's, with one thread 4.5 % from two)."""
    return np.einsum("ij,ij->i", left_rows, right_rows, dtype=np.float64).astype(np.float32)


def uses_ivf(search: SemanticSearch, rows: int) -> bool:
    return search == "ivf" or (search == "auto" and rows > EXACT_SEARCH_MAX)


def ivf_lists(rows: int, lists: int | None = None) -> int:
    """Cells of the inverted index: `lists`, or 4 * sqrt(rows) (faiss's rule of thumb), at most one per 39 rows
    (fewer training points per cell and k-means is unreliable)."""
    wanted = lists if lists is not None else round(4 * math.sqrt(rows))
    return max(1, min(wanted, rows // 39))


def ivf_index(
    vectors: np.ndarray, lists: int | None = None, probes: int = DEFAULT_PROBES, codec: IvfCodec = "flat"
) -> Any:
    """A faiss inner-product IVF index over `vectors` (L2-normalized float32 rows), trained by k-means on a seeded
    sample: the same vectors give the same index, whatever the process (the Ray engine builds it by parts in
    tasks, the stage here). `codec`: how the index stores the vectors (module docstring)."""
    return ivf_shards(vectors, 1, lists, probes, codec)[0]


def ivf_shards(
    vectors: np.ndarray, shards: int, lists: int | None = None, probes: int = DEFAULT_PROBES, codec: IvfCodec = "flat"
) -> list[Any]:
    """`ivf_index` cut by cells into `shards` indexes (contiguous runs of cells, about as many rows each), each
    holding only its cells' rows under their row numbers, all with the one trained quantizer (1: the whole index).
    Searched with the same probes, a shard scans those of a query's cells that it holds (the others are empty in
    it), so the shards' pairs together are exactly the whole index's: a Ray search task then holds one shard, not
    every vector. Search them with each block's coarse search (`ivf_probed`) done once for all the shards.

    Built in steps that the Ray engine runs apart, in tasks (the cells trained on the sample's rows, each block's
    cells, each part): `ivf_trained`, `ivf_nearest` per block, `ivf_cut`, `ivf_filled` per part."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    trained = ivf_trained(vectors, lists, probes, codec)
    cells = np.concatenate(
        [ivf_nearest(trained.quantizer, vectors, start) for start in range(0, len(vectors), BLOCK_ROWS)]
    )
    return [ivf_filled(trained, vectors, rows, cells[rows]) for rows in ivf_cut(cells, trained.nlist, shards)]


def ivf_trained(
    vectors: np.ndarray, lists: int | None = None, probes: int = DEFAULT_PROBES, codec: IvfCodec = "flat"
) -> Any:
    """The index with its cells trained (k-means on the seeded sample `ivf_sample` of `vectors`) and no row in it
    yet."""
    sample = ivf_sample(len(vectors), lists)
    return ivf_trained_on(vectors if sample is None else vectors[sample], len(vectors), lists, probes, codec)


IVF_PART_BYTES = 1 << 30  # `ivf_shards: auto`: an index part's vectors at most this size


def ivf_parts(shards: int | str, rows: int, dimensions: int, codec: IvfCodec) -> int:
    """How many parts an index over `rows` vectors is cut into: `shards`, or with `auto` as many as keep a part's
    vectors (4 bytes a dimension flat, 1 sq8) under IVF_PART_BYTES, at most 256."""
    if shards != "auto":
        return int(shards)
    size = rows * dimensions * (1 if codec == "sq8" else 4)
    return max(1, min(256, -(-size // IVF_PART_BYTES)))


def ivf_sample(rows: int, lists: int | None = None) -> np.ndarray | None:
    """The rows (ascending) that train the cells of an index over `rows` vectors: TRAIN_POINTS_PER_LIST a cell,
    drawn with a fixed seed (None: all of them). Drawn here rather than by faiss, from the number of rows alone, so
    that the Ray engine gathers the same rows from its blocks of vectors without ever holding them all."""
    wanted = ivf_lists(rows, lists) * TRAIN_POINTS_PER_LIST
    if rows <= wanted:
        return None
    return np.sort(np.random.default_rng(1234).choice(rows, size=wanted, replace=False))


def ivf_trained_on(
    sample: np.ndarray, rows: int, lists: int | None = None, probes: int = DEFAULT_PROBES, codec: IvfCodec = "flat"
) -> Any:
    """`ivf_trained` from its training rows (`ivf_sample` of the `rows` vectors, in order): faiss samples no further."""
    import faiss

    sample = np.ascontiguousarray(sample, dtype=np.float32)
    cells, dimensions = ivf_lists(rows, lists), sample.shape[1]
    quantizer = faiss.IndexFlatIP(dimensions)
    if codec == "sq8":
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, dimensions, cells, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
    else:
        index = faiss.IndexIVFFlat(quantizer, dimensions, cells, faiss.METRIC_INNER_PRODUCT)
    index.cp.max_points_per_centroid = TRAIN_POINTS_PER_LIST
    index.cp.seed = 1234
    index.train(sample)
    index.nprobe = min(probes, cells)
    return index


def ivf_nearest(
    quantizer: Any, vectors: np.ndarray, start: int, probed: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """The cell each row of [start, start + BLOCK_ROWS) is filed under: its nearest centroid, the first of equals
    as faiss's own `add` picks it. Taken from the block's coarse search when given (`ivf_probed`: its nearest
    column, where a sort of equal products may put a later cell first), else one search of the centroids."""
    if probed is None:
        block = np.ascontiguousarray(vectors[start : start + BLOCK_ROWS], dtype=np.float32)
        return quantizer.search(block, 1)[1][:, 0]
    cells, similarities = probed
    nearest = cells[:, 0].copy()
    tied = similarities == similarities[:, :1]
    for row in np.flatnonzero(tied.sum(axis=1) > 1):
        nearest[row] = cells[row][tied[row]].min()
    return nearest


def ivf_cut(cells: np.ndarray, lists: int, shards: int) -> list[np.ndarray]:
    """The rows of each part (ascending), given each row's cell: part k takes the cells whose running row count
    falls in its k-th equal share of the rows."""
    rows_per_cell = np.bincount(cells, minlength=lists)
    shard_of_cell = np.minimum(
        (np.cumsum(rows_per_cell) - rows_per_cell) * shards // max(1, len(cells)), shards - 1
    ).astype(np.int64)
    shard_of_row = shard_of_cell[cells]
    order = np.argsort(shard_of_row, kind="stable")
    return np.split(order, np.cumsum(np.bincount(shard_of_row, minlength=shards))[:-1])


def ivf_filled(trained: Any, vectors: np.ndarray, rows: np.ndarray, cells: np.ndarray) -> Any:
    """A copy of the `trained` index holding `rows` of `vectors` (under their row numbers) in their `cells`."""
    import faiss
    from faiss.contrib.ivf_tools import add_preassigned

    index = faiss.clone_index(trained)
    part = vectors if len(rows) == len(vectors) else vectors[rows]
    add_preassigned(
        index,
        np.ascontiguousarray(part, dtype=np.float32),
        np.ascontiguousarray(cells, dtype=np.int64),
        np.ascontiguousarray(rows, dtype=np.int64),
    )
    return index


def quantized(index: Any) -> bool:
    """Whether the index holds the vectors in fewer bytes than float32 (sq8), so its scores are approximate."""
    return bool(index.code_size < 4 * index.d)


def ivf_probed(quantizer: Any, probes: int, vectors: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray]:
    """The coarse search of rows [start, start + BLOCK_ROWS): each row's `probes` nearest cells and its inner
    product with each (what an IVF index's own search computes first), for `ivf_block_pairs` to hand every shard."""
    block = np.ascontiguousarray(vectors[start : start + BLOCK_ROWS], dtype=np.float32)
    similarities, cells = quantizer.search(block, probes)
    return cells, similarities


def ivf_block_pairs(
    index: Any,
    vectors: np.ndarray,
    start: int,
    threshold: float,
    probed: tuple[np.ndarray, np.ndarray] | None = None,
    base: int = 0,
    lookup: Callable[[np.ndarray], np.ndarray] | None = None,
) -> list[tuple[int, int, float]]:
    """The pairs found from rows [start, start + BLOCK_ROWS) of `vectors` as queries, each as (i < j): a pair can be
    found from either of its rows (their cells differ), so blocks overlap; `merged_pairs` joins them. The index is
    searched a margin under the threshold (SQ8_MARGIN for a `quantized` one, else RESCORE_MARGIN) and each pair kept
    on its `cosines` value, from the float vectors of its rows (`lookup` by row number; by default `vectors` holds
    every row). `probed`: the block's coarse search (`ivf_probed`), done once for all of an index's shards instead
    of by each. `base`: the row number of `vectors[0]` (the Ray engine's blocks of vectors are parts of the whole)."""
    block = np.ascontiguousarray(vectors[start : start + BLOCK_ROWS], dtype=np.float32)
    radius = threshold - (SQ8_MARGIN if quantized(index) else RESCORE_MARGIN)
    # faiss returns inner products strictly above the radius
    radius = float(np.nextafter(np.float32(radius), np.float32(-2)))
    if probed is None:
        limits, _, ids = index.range_search(block, radius)
    else:
        limits, _, ids = index.range_search_preassigned(block, radius, *probed)
    local = np.repeat(np.arange(len(block), dtype=np.int64), np.diff(limits).astype(np.int64))
    rows = local + (base + start)
    other = ids != rows
    local, rows, ids = local[other], rows[other], ids[other]
    rows_of = lookup if lookup is not None else vectors.__getitem__
    # the exact search's value, to the bit (a product is the same either way round): the query rows from the block
    similarities = cosines(block[local], rows_of(ids))
    true = similarities >= threshold
    rows, ids, similarities = rows[true], ids[true], similarities[true]
    first, second = np.minimum(rows, ids), np.maximum(rows, ids)
    return list(zip(first.tolist(), second.tolist(), similarities.tolist(), strict=True))


def merged_pairs(blocks: Iterable[list[tuple[int, int, float]]]) -> list[tuple[int, int, float]]:
    """Each pair once, in (i, j) order, with its similarity (re-scored the same way from either of its rows; the
    highest kept all the same)."""
    best: dict[tuple[int, int], float] = {}
    for block in blocks:
        for i, j, similarity in block:
            if similarity > best.get((i, j), -2.0):
                best[(i, j)] = similarity
    return [(i, j, best[(i, j)]) for i, j in sorted(best)]


def similar_pairs(
    vectors: np.ndarray,
    threshold: float,
    search: SemanticSearch = "exact",
    lists: int | None = None,
    probes: int = DEFAULT_PROBES,
    codec: IvfCodec = "flat",
    shards: int = 1,
) -> list[tuple[int, int, float]]:
    """Every pair (i < j) of rows whose cosine reaches `threshold` (with `ivf`: those the index finds, from one
    index or its `shards`: the same pairs); rows must be L2-normalized."""
    starts = range(0, len(vectors), BLOCK_ROWS)
    if not uses_ivf(search, len(vectors)):
        return [pair for start in starts for pair in block_pairs(vectors, start, threshold)]
    parts = ivf_shards(vectors, shards, lists, probes, codec)

    def blocks() -> Iterable[list[tuple[int, int, float]]]:
        for start in starts:  # each block's coarse search once, for all the parts
            probed = ivf_probed(parts[0].quantizer, parts[0].nprobe, vectors, start) if len(parts) > 1 else None
            yield from (ivf_block_pairs(part, vectors, start, threshold, probed) for part in parts)

    return merged_pairs(blocks())


def comparable(
    vectors: np.ndarray, backend: Backend, in_place: bool = False, mean: np.ndarray | None = None
) -> np.ndarray:
    """The vectors as the similarity search compares them: static (bag-of-token) vectors share a corpus direction,
    so what is left of it is compared. `in_place`: into `vectors` itself, with no temporary as large as them. `mean`:
    the corpus's (`corpus_mean`), where `vectors` are one block of it (the Ray engine's); the same values either way."""
    if backend != "static":
        return vectors
    if mean is None:
        mean = corpus_mean([vectors])
    if not in_place:
        vectors = vectors.copy()
    vectors -= mean
    for start in range(0, len(vectors), MEAN_CHUNK_ROWS):  # a row's norm does not depend on the rows beside it
        rows = vectors[start : start + MEAN_CHUNK_ROWS]
        rows /= np.clip(np.linalg.norm(rows, axis=1, keepdims=True), 1e-9, None)
    return vectors


def corpus_mean(parts: Iterable[np.ndarray]) -> np.ndarray:
    """The mean row of the vectors given in `parts` (consecutive runs of rows), the same to the bit however they are
    cut: summed in float64 over fixed runs of MEAN_CHUNK_ROWS rows counted from the first, the runs' sums added in
    order (the Ray engine streams its blocks through here; the local stage gives one matrix)."""
    total: np.ndarray | None = None
    rows = 0
    pending: list[np.ndarray] = []
    held = 0

    def flush() -> None:
        nonlocal total, pending, held
        chunk = np.ascontiguousarray(pending[0] if len(pending) == 1 else np.concatenate(pending), dtype=np.float32)
        summed = chunk.sum(axis=0, dtype=np.float64)
        total = summed if total is None else total + summed
        pending, held = [], 0

    for part in parts:
        rows += len(part)
        offset = 0
        while offset < len(part):
            take = min(MEAN_CHUNK_ROWS - held, len(part) - offset)
            pending.append(part[offset : offset + take])
            held += take
            offset += take
            if held == MEAN_CHUNK_ROWS:
                flush()
    if held:
        flush()
    if total is None:
        raise ValueError("corpus_mean of no rows")
    return (total / rows).astype(np.float32)


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
    search: SemanticSearch = "exact",
    lists: int | None = None,
    probes: int = DEFAULT_PROBES,
    codec: IvfCodec = "flat",
) -> list[DuplicateCluster]:
    if len(documents) < 2:
        return []
    vectors = comparable(
        embed([d.text for d in documents], model, device, batch_size, backend, max_seq_length, cache), backend
    )
    pairs = similar_pairs(vectors, threshold, search, lists, probes, codec)
    return semantic_clusters(documents, pairs, keep)


@DEDUP_METHODS.register("semantic")
def semantic_method(documents: list[Document], config: DedupConfig) -> list[DuplicateCluster]:
    config = config.resolved_for(len(d.text) for d in documents)  # the workflow's: already resolved
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
        search=config.semantic_search,
        lists=config.ivf_lists,
        probes=config.ivf_probes,
        codec=config.ivf_codec,
    )
