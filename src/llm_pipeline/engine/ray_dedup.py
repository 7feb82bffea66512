"""The load-and-deduplicate stage on Ray: the same outputs as the local engine, the work spread over a cluster.

  load      one task per input file (`ingest.load.load_file`); its documents stay in Ray's object store, the
            driver gets their ids and the few numbers the keep rule and exact dedup need (length, metadata
            richness, a text hash). Ids repeated across files are quarantined by the driver, as the one-process
            loader would (first file wins).
  exact     by those hashes in the driver (one dict of 32-byte digests).
  minhash   map: one task per slice of `execution.shard_documents` documents: signatures and shingle sets, and
            every (band, key, document) row sent to one of P partitions by its key (`minhash.band_rows`);
            reduce: one task per partition groups its buckets into candidate pairs (`minhash.partition_pairs`);
            verify: one task per slice checks its pairs on the exact Jaccard of the shingle sets (or the
            estimate), fetching only the slices its partners live in. The kept-document rule then runs in the
            driver over the verified pairs (a pass over pairs, not documents).
  others    semantic and plug-in methods run in the driver on the documents still kept (fetched then).
  write     documents.jsonl streamed shard by shard in input order: the driver holds one shard at a time.

Identical results: signatures, band keys and the exact Jaccard do not depend on where or in what order they are
computed; global indices keep input order, so the keep rule sees the documents in the order the local engine
does. Ray retries a task whose worker died (`execution.task_retries`), recomputing lost inputs from lineage.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray

from llm_pipeline.config import DataConfig, PipelineConfig
from llm_pipeline.dedup.clusters import DocumentKey, clusters_by_kept, clusters_from_pairs, keep_ranks, richness
from llm_pipeline.dedup.methods import method_sequence
from llm_pipeline.dedup.minhash import (
    BAND_ROW,
    ShingleSets,
    _signatures,
    band_rows,
    lsh_params,
    partition_pairs,
    set_jaccard,
    unique_pairs,
)
from llm_pipeline.dedup.workflow import DedupResult, run_methods
from llm_pipeline.engine.ray_session import cluster_cpus, fetch, fetch_each, ray_session
from llm_pipeline.ingest.load import IngestResult, _safe, input_files, load_documents, load_file, require_documents
from llm_pipeline.io import atomic_open, write_json, write_jsonl
from llm_pipeline.logging import get_logger
from llm_pipeline.records import Document, DuplicateCluster, Reject

log = get_logger("engine.ray")


@dataclass
class FileLoad:
    """What the driver keeps of one loaded file: a few numbers per document, the documents themselves stay in
    the object store (`documents`, `origins`)."""

    result: IngestResult  # summary, rejects, counts of this file; its `documents` list is empty
    ids: list[str]
    lengths: np.ndarray
    richness: np.ndarray
    digests: list[bytes]
    documents: Any = None  # ObjectRef -> list[Document]
    origins: Any = None  # ObjectRef -> list[(location, raw)]
    base: int = 0  # global index of its first document
    path: str = ""


@dataclass
class Plan:
    files: list[FileLoad] = field(default_factory=list)
    alive: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # loaded and not yet removed
    loaded: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # loaded (id not repeated)
    keys: list[DocumentKey] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.alive)

    def file_of(self, index: int) -> int:
        bases = [f.base for f in self.files]
        return int(np.searchsorted(bases, index, side="right") - 1)


def _exact_digest(text: str) -> bytes:
    return hashlib.sha256(text.lower().encode("utf-8")).digest()  # dedup.exact's key, as bytes


@ray.remote(num_returns=3)
def _load_file(path: str, source: str, relative: str, data: DataConfig) -> tuple[Any, list[Document], list]:
    result = IngestResult(origins=[])
    load_file(Path(path), relative, data, result, set(), source)
    documents, origins = result.documents, result.origins or []
    meta = {
        "result": IngestResult(
            rejects=result.rejects, records_seen=result.records_seen, files=result.files, repairs=result.repairs
        ),
        "ids": [d.id for d in documents],
        "lengths": np.fromiter((len(d.text) for d in documents), dtype=np.int64, count=len(documents)),
        "richness": np.fromiter((richness(d) for d in documents), dtype=np.int64, count=len(documents)),
        "digests": [_exact_digest(d.text) for d in documents],
    }
    return meta, documents, origins


@ray.remote
def _minhash_map(
    documents: list[Document], positions: np.ndarray, base: int, shingle_size: int, num_perm: int,
    bands: int, rows: int, partitions: int,
) -> list[Any]:  # fmt: skip
    """Signatures of documents[positions] (their global indices: base + positions), their band rows split by
    partition, and (last) their signatures and shingle sets for the verification."""
    texts = [documents[int(k)].text for k in positions]
    sigs, hashes, offsets = _signatures(texts, shingle_size, num_perm, 1)
    docs = positions.astype(np.int64) + base
    parts = band_rows(sigs, docs, bands, rows, partitions)
    return [*parts, (docs, sigs, hashes, offsets)]


@ray.remote
def _minhash_reduce(ranks: np.ndarray, n: int, *parts: np.ndarray) -> np.ndarray:
    return partition_pairs(list(parts), ranks, n)


@ray.remote
def _verify(pairs: np.ndarray, threshold: float, verify: str, *slices: tuple) -> np.ndarray:
    """(i, j, similarity) rows of the pairs that reach the threshold; `slices` hold every document named."""
    docs = np.concatenate([s[0] for s in slices])
    order = np.argsort(docs)
    docs = docs[order]
    where = np.concatenate([np.full(len(s[0]), k) for k, s in enumerate(slices)])[order]
    within = np.concatenate([np.arange(len(s[0])) for s in slices])[order]
    sets = [ShingleSets(s[2], s[3]) for s in slices]

    def locate(doc: int) -> tuple[int, int]:
        k = int(np.searchsorted(docs, doc))
        return int(where[k]), int(within[k])

    out = []
    for i, j in pairs.tolist():
        (si, ki), (sj, kj) = locate(i), locate(j)
        estimate = float((slices[si][1][ki] == slices[sj][1][kj]).mean())
        if verify == "exact":
            if estimate < threshold - 0.2:  # as minhash.verified_pairs: cannot reach the threshold
                continue
            similarity = set_jaccard(sets[si].of(ki), sets[sj].of(kj))
        else:
            similarity = estimate
        if similarity >= threshold:
            out.append((i, j, similarity))
    return np.asarray(out, dtype=np.float64).reshape(-1, 3)


def _load(config: PipelineConfig, address: str) -> tuple[IngestResult, Plan]:
    data = config.data
    files = input_files(data)
    # absolute: a Ray worker runs in a folder of its own (and on another node, where data.path must be the same path)
    refs = [_load_file.remote(str(path.resolve()), str(path), relative, data) for path, relative in files]
    merged = IngestResult()
    plan = Plan()
    seen: set[str] = set()
    alive: list[np.ndarray] = []
    base = 0
    for (path, _), (meta_ref, documents_ref, origins_ref) in zip(files, refs, strict=True):
        meta = fetch(meta_ref, address)
        part: IngestResult = meta["result"]
        merged.files.extend(part.files)
        merged.rejects.extend(part.rejects)
        merged.records_seen += part.records_seen
        merged.repairs.update(part.repairs)
        load = FileLoad(part, meta["ids"], meta["lengths"], meta["richness"], meta["digests"],
                        documents_ref, origins_ref, base, str(path))  # fmt: skip
        mask = np.ones(len(load.ids), dtype=bool)
        repeated = []
        for k, doc_id in enumerate(load.ids):
            if doc_id in seen:
                mask[k] = False
                repeated.append(k)
            else:
                seen.add(doc_id)
        if repeated:  # quarantined as the one-process loader does: the id appeared in an earlier file
            origins = fetch(origins_ref, address)
            for k in repeated:
                location, raw = origins[k]
                merged.rejects.append(Reject(source=str(path), location=location, record_id=_safe(load.ids[k]), raw=raw,
                                             reason=f"duplicate_id: {load.ids[k]} appeared earlier"))  # fmt: skip
            part.files[0].documents -= len(repeated)
            part.files[0].quarantined += len(repeated)
        alive.append(mask)
        plan.files.append(load)
        plan.keys.extend(DocumentKey(i, int(length), int(rich))
                         for i, length, rich in zip(load.ids, load.lengths, load.richness, strict=True))  # fmt: skip
        base += len(load.ids)
    plan.alive = np.concatenate(alive) if alive else np.zeros(0, dtype=bool)
    plan.loaded = plan.alive.copy()
    merged.loaded = int(plan.alive.sum())
    log.info("documents_loaded", engine="ray", **{k: v for k, v in merged.counts().items() if v})
    return merged, plan


def _held(ingested: IngestResult) -> tuple[IngestResult, Plan]:
    """Documents read in this process, put in the object store as one shard."""
    documents = ingested.documents
    load = FileLoad(
        IngestResult(), [d.id for d in documents], np.zeros(0), np.zeros(0),
        [_exact_digest(d.text) for d in documents], ray.put(documents),
    )  # fmt: skip
    alive = np.ones(len(documents), dtype=bool)
    plan = Plan(files=[load], alive=alive, loaded=alive.copy(), keys=[DocumentKey.of(d) for d in documents])
    ingested.documents, ingested.loaded = [], len(documents)
    return ingested, plan


def _exact(plan: Plan, config: PipelineConfig) -> list[DuplicateCluster]:
    first: dict[bytes, int] = {}
    pairs = []
    for load in plan.files:
        for k, digest in enumerate(load.digests):
            index = load.base + k
            if not plan.alive[index]:
                continue
            earlier = first.setdefault(digest, index)
            if earlier != index:
                pairs.append((earlier, index, 1.0))
    return clusters_from_pairs(plan.keys, pairs, "exact", config.dedup.keep)


def _minhash(plan: Plan, config: PipelineConfig, address: str) -> list[DuplicateCluster]:
    dedup, execution = config.dedup, config.execution
    threshold = dedup.jaccard_threshold
    if plan.alive.sum() < 2:
        return []
    bands, rows = lsh_params(threshold, dedup.num_perm, dedup.bands)
    partitions = execution.shuffle_partitions or cluster_cpus()
    ranks = np.asarray(keep_ranks(plan.keys, dedup.keep), dtype=np.int64)
    ranks_ref = ray.put(ranks)
    retries = {"max_retries": execution.task_retries}
    maps: list[list[Any]] = []
    slice_of = np.full(plan.n, -1, dtype=np.int64)
    for load in plan.files:
        positions = np.flatnonzero(plan.alive[load.base : load.base + len(load.ids)])
        for start in range(0, len(positions), execution.shard_documents):
            chosen = positions[start : start + execution.shard_documents]
            slice_of[chosen + load.base] = len(maps)
            maps.append(
                _minhash_map.options(num_returns=partitions + 1, **retries).remote(
                    load.documents, chosen, load.base, dedup.shingle_size, dedup.num_perm, bands, rows, partitions
                )
            )
    reducers = [
        _minhash_reduce.options(**retries).remote(ranks_ref, plan.n, *[m[p] for m in maps]) for p in range(partitions)
    ]
    pairs = unique_pairs(list(fetch(reducers, address)), plan.n)
    shuffle_bytes = int(plan.alive.sum()) * bands * BAND_ROW.itemsize
    verifying = []
    owner = slice_of[pairs[:, 0]] if len(pairs) else np.zeros(0, dtype=np.int64)
    for s in np.unique(owner).tolist():
        mine = pairs[owner == s]
        needed = [s, *sorted(set(slice_of[mine[:, 1]].tolist()) - {s})]
        verifying.append(
            _verify.options(**retries).remote(mine, threshold, dedup.verify, *[maps[k][partitions] for k in needed])
        )
    verified = [(int(i), int(j), float(sim)) for block in fetch(verifying, address) for i, j, sim in block.tolist()]
    log.info("minhash_distributed", slices=len(maps), partitions=partitions, candidates=len(pairs),
             verified=len(verified), shuffle_bytes=shuffle_bytes)  # fmt: skip
    return clusters_by_kept(plan.keys, sorted(verified), "minhash", dedup.keep)


def _remove(plan: Plan, clusters: list[DuplicateCluster]) -> int:
    index = {key.id: i for i, key in enumerate(plan.keys) if plan.alive[i]}
    removed = 0
    for cluster in clusters:
        for member in cluster.members:
            if member != cluster.kept and plan.alive[index[member]]:
                plan.alive[index[member]] = False
                removed += 1
    return removed


def _documents(plan: Plan, address: str, wanted: np.ndarray | None = None) -> list[Document]:
    """The alive documents (or those of `wanted`, a mask), in input order, fetched file by file."""
    mask = plan.alive if wanted is None else wanted
    parts = []
    for load in plan.files:
        mine = mask[load.base : load.base + len(load.ids)]
        if mine.any():
            parts.append(_select.remote(load.documents, mine))  # filtered where the documents are
    return [d for chunk in fetch_each(parts, address) for d in chunk]


@ray.remote
def _select(documents: list[Document], mask: np.ndarray) -> list[Document]:
    return [d for d, keep in zip(documents, mask.tolist(), strict=True) if keep]


def load_and_deduplicate(config: PipelineConfig, outputs: dict[str, Path]) -> tuple[IngestResult, DedupResult, int]:
    """The stage's work on Ray; writes the stage's outputs. Returns what was loaded (its `documents` empty),
    the dedup result (its `kept` empty unless a driver-side method needed the documents) and the count kept."""
    with ray_session(config.execution) as address:
        if config.data.limit is not None:
            # a quick run: read in order up to the limit here (a file-parallel read would read past it)
            ingested, plan = _held(load_documents(config.data))
        else:
            ingested, plan = _load(config, address)
        write_jsonl(outputs["rejects"], ingested.rejects)
        require_documents(ingested, config.data)
        total = int(plan.alive.sum())
        dedup = config.dedup
        result = DedupResult(kept=[])
        methods = list(method_sequence(dedup.method))
        distributed = {"exact": lambda: _exact(plan, config), "minhash": lambda: _minhash(plan, config, address)}
        if dedup.index == "redis":
            distributed.pop("minhash")  # the shared Redis index is the cross-worker mechanism: run it as it is
        while methods and methods[0] in distributed:
            method = methods.pop(0)
            clusters = distributed[method]()
            result.clusters.extend(clusters)
            result.removed_by_method[method] = _remove(plan, clusters)
            log.info("dedup_method_done", method=method, engine="ray", clusters=len(clusters),
                     removed=result.removed_by_method[method], remaining=int(plan.alive.sum()))  # fmt: skip
        if methods:  # semantic and plug-in methods: in the driver, on the documents still kept
            result.kept = _documents(plan, address)
            run_methods(result, tuple(methods), dedup)
            write_jsonl(outputs["documents"], result.kept)
            kept = len(result.kept)
        else:
            kept = _write_alive(plan, outputs["documents"], address)
        _write_examples(plan, result, config, outputs["examples"], address)
        write_jsonl(outputs["clusters"], result.clusters)
        ingested.loaded = total
        return ingested, result, kept


@ray.remote
def _jsonl(documents: list[Document], mask: np.ndarray) -> bytes:
    """The kept documents of one file as documents.jsonl's lines: serialized on the cluster, written by the
    driver as they come, in input order."""
    return "".join(
        d.model_dump_json() + "\n" for d, keep in zip(documents, mask.tolist(), strict=True) if keep
    ).encode()


def _write_alive(plan: Plan, path: Path, address: str) -> int:
    parts = [_jsonl.remote(f.documents, plan.alive[f.base : f.base + len(f.ids)]) for f in plan.files]
    with atomic_open(path, "wb") as handle:
        for chunk in fetch_each(parts, address):
            handle.write(chunk)
    return int(plan.alive.sum())


def _write_examples(plan: Plan, result: DedupResult, config: PipelineConfig, path: Path, address: str) -> None:
    from llm_pipeline.stages.load_and_deduplicate import EXAMPLE_CLUSTERS, cluster_examples

    everything = result.clusters + result.review
    shown = [c for c in everything if c.method != "semantic"][:EXAMPLE_CLUSTERS]
    wanted_ids = {m for c in shown for m in c.members[:3]} | {
        m for c in everything if c.method == "semantic" for m in c.members
    }
    wanted = plan.loaded & np.fromiter((key.id in wanted_ids for key in plan.keys), dtype=bool, count=plan.n)
    documents = _documents(plan, address, wanted)
    write_json(path, cluster_examples(documents, everything, config.dedup))
