"""The load-and-deduplicate stage on Ray: the same outputs as the local engine, the work spread over a cluster.

  load      one task per input file (`ingest.load.load_file`), or per part of a JSON Lines file over
            `execution.load_part_bytes` (cut at line ends, lines numbered as in the whole file); its documents
            stay in Ray's object store as their documents.jsonl lines (serialized once, where they were read);
            the driver gets their ids and
            the few numbers the keep rule and exact dedup need (length, metadata richness, a text hash). When
            MinHash runs here, the same task signs the file's texts while it holds them: signatures and shingle
            sets stay in the store, and every (band, key, document) row goes to one of P partitions by its key
            (`minhash.band_rows`): the map side of the shuffle. Ids repeated across files are quarantined by the
            driver, as the one-process loader would (first file wins).
  exact     by those hashes in the driver (one dict of 32-byte digests).
  minhash   reduce: one task per partition groups its buckets into candidate pairs among the documents still
            alive (`minhash.partition_pairs`); verify: one task per file with pairs checks them on the exact
            Jaccard of the shingle sets (or the estimate), fetching only the files its partners live in. The
            kept-document rule then runs in the driver over the verified pairs (a pass over pairs, not documents).
  semantic  on the documents still kept, their texts left in the store (`_KeptDocuments`: the driver holds their
            keys): embeddings by actors that load the model once and take shards of texts that one task per file
            reads from the store (`_Embedder`, `_texts`), cut by tasks into blocks of vectors (no process holds
            them all); the similarity search by block pairs (`semantic.pairs_between`, a task per pair), or with
            `ivf` the index (the same index as locally: seeded k-means on the same sampled rows, trained by a task)
            filled by tasks, in `ivf_shards` parts by cells, each from its rows of every block, into the store and
            searched by a task per block and part; the keep rule in the driver over the pairs and the keys, as
            locally (a judge given the texts of the pairs' documents, fetched for it).
  others    plug-in methods, and semantic with an embedding cache (one folder), run in the driver on the
            documents still kept (fetched then).
  write     documents.jsonl: the kept lines, file by file in input order (the driver holds one file at a time).

Identical results: signatures, band keys and the exact Jaccard do not depend on where or in what order they are
computed; global indices keep input order, so the keep rule sees the documents in the order the local engine
does. Ray retries a task whose worker died (`execution.task_retries`), recomputing lost inputs from lineage.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import ray

from llm_pipeline.config import DataConfig, PipelineConfig
from llm_pipeline.dedup.clusters import (
    DocumentKey,
    clusters_by_kept,
    clusters_from_pairs,
    keep_ranks,
    richness,
    semantic_clusters,
    text_length,
)
from llm_pipeline.dedup.exact import hashing_digest
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
from llm_pipeline.dedup.workflow import DedupResult, run_methods, semantic_step

if TYPE_CHECKING:
    from llm_pipeline.dedup.judge import SemanticJudge
from llm_pipeline.engine.ray_session import (
    cluster_cpus,
    fetch,
    fetch_each,
    ray_session,
)
from llm_pipeline.ingest.load import (
    FileSummary,
    IngestResult,
    _kind,
    _safe,
    ids_for_shared_stems,
    input_files,
    load_documents,
    load_file,
    require_documents,
)
from llm_pipeline.ingest.sources import Part, UnreadableFile, file_parts
from llm_pipeline.io import atomic_open, write_json, write_jsonl
from llm_pipeline.logging import get_logger
from llm_pipeline.records import Document, DuplicateCluster, Reject
from llm_pipeline.text import number_mask, word_set

log = get_logger("engine.ray")


@dataclass
class FileLoad:
    """What the driver keeps of one loaded file: a few numbers per document, the documents themselves stay in
    the object store (`lines`, `origins`)."""

    result: IngestResult  # summary, rejects, counts of this file; its `documents` list is empty
    ids: list[str]
    lengths: np.ndarray
    richness: np.ndarray
    numbers: np.ndarray  # text.number_mask of each text (uint64): semantic dedup's numbers rule
    digests: np.ndarray  # 32-byte exact-dedup keys ("V32")
    lines: Any = None  # ObjectRef -> list[bytes]: each document as its documents.jsonl line (no newline)
    origins: Any = None  # ObjectRef -> list[(location, raw)]
    base: int = 0  # global index of its first document
    path: str = ""
    signed: list[Any] = field(default_factory=list)  # ObjectRefs: [signatures and shingle sets, band rows by partition]


@dataclass
class Plan:
    files: list[FileLoad] = field(default_factory=list)
    alive: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # loaded and not yet removed
    loaded: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # loaded (id not repeated)
    keys: Keys = field(default_factory=lambda: Keys())

    @property
    def n(self) -> int:
        return len(self.alive)

    def file_of(self, index: int) -> int:
        bases = [f.base for f in self.files]
        return int(np.searchsorted(bases, index, side="right") - 1)


def _digests(documents: list[Document]) -> np.ndarray:
    """The documents' exact-dedup keys as one array of 32-byte items (no Python object per document)."""
    return np.frombuffer(b"".join(hashing_digest(d.text) for d in documents), dtype="V32")


def _number_masks(documents: list[Document], wanted: bool) -> np.ndarray:
    """Each text's `number_mask` (the numbers it states, as a 64-bit set) where semantic dedup's numbers rule will
    read them (`wanted`: `_wants_numbers`); zeros otherwise, not a pass over every text for nothing."""
    if not wanted:
        return np.zeros(len(documents), dtype=np.uint64)
    return np.fromiter((number_mask(d.text) for d in documents), dtype=np.uint64, count=len(documents))


def _wants_numbers(config: PipelineConfig) -> bool:
    return "semantic" in method_sequence(config.dedup.method) and config.dedup.semantic_numbers_must_agree


class Keys(Sequence[DocumentKey]):
    """What the keep rule and the clusters need of each document (`DocumentKey`), held as columns: the ids and two
    integer arrays, a DocumentKey made only when one is asked for. A few bytes a document plus its id, where a list
    of DocumentKey objects costs over a hundred (the driver holds one per document of the corpus)."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self._lengths: list[np.ndarray] = []
        self._richness: list[np.ndarray] = []
        self._numbers: list[np.ndarray] = []
        self._joined: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def extend(self, ids: list[str], lengths: np.ndarray, richness: np.ndarray, numbers: np.ndarray) -> None:
        self.ids.extend(ids)
        self._lengths.append(np.asarray(lengths, dtype=np.int64))
        self._richness.append(np.asarray(richness, dtype=np.int64))
        self._numbers.append(np.asarray(numbers, dtype=np.uint64))
        self._joined = None

    def _columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._joined is None:
            empty = np.zeros(0, dtype=np.int64)
            lengths = np.concatenate(self._lengths) if self._lengths else empty
            richness = np.concatenate(self._richness) if self._richness else empty
            numbers = np.concatenate(self._numbers) if self._numbers else empty.astype(np.uint64)
            self._lengths, self._richness, self._numbers = [lengths], [richness], [numbers]
            self._joined = (lengths, richness, numbers)
        return self._joined

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> DocumentKey:  # type: ignore[override]
        lengths, richness, numbers = self._columns()
        return DocumentKey(self.ids[index], int(lengths[index]), int(richness[index]), int(numbers[index]))


@dataclass(frozen=True)
class Signing:
    """What a load task needs to sign its documents for MinHash right away (one pass over the file's texts)."""

    shingle_size: int
    num_perm: int
    bands: int
    rows: int
    partitions: int


def _sign(documents: list[Document], file_index: int, signing: Signing) -> list[Any]:
    """[(positions, signatures, shingle hashes, offsets), partition 0 rows, ..., partition P-1 rows] of one file's
    documents. A row's document is (file_index << 32 | position): the driver knows the global index only once
    the files before this one are counted."""
    sigs, hashes, offsets = _signatures([d.text for d in documents], signing.shingle_size, signing.num_perm, 1)
    positions = np.arange(len(documents), dtype=np.int64)
    parts = band_rows(sigs, positions | (file_index << 32), signing.bands, signing.rows, signing.partitions)
    return [(positions, sigs, hashes, offsets), *parts]


@ray.remote
def _sign_task(documents: list[Document], file_index: int, signing: Signing) -> list[Any]:
    return _sign(documents, file_index, signing)


@ray.remote
def _load_file(
    path: str,
    source: str,
    relative: str,
    data: DataConfig,
    file_index: int,
    signing: Signing | None,
    part: Part | None = None,
    numbers: bool = False,
    document_id: str | None = None,
) -> list[Any]:
    """One file, or one `part` of a big one: [meta (ids and the keep rule's numbers, rejects, summary), lines,
    origins] and, with `signing`, its MinHash signatures and band rows (the _sign list), computed while the texts
    are at hand; with `numbers`, each text's number mask (semantic dedup's numbers rule; zeros otherwise)."""
    result = IngestResult(origins=[])
    load_file(Path(path), relative, data, result, set(), source, part, document_id)
    documents, origins = result.documents, result.origins or []
    meta = {
        "result": IngestResult(
            rejects=result.rejects, records_seen=result.records_seen, files=result.files, repairs=result.repairs
        ),
        "ids": [d.id for d in documents],
        "lengths": np.fromiter((len(d.text) for d in documents), dtype=np.int64, count=len(documents)),
        "richness": np.fromiter((richness(d) for d in documents), dtype=np.int64, count=len(documents)),
        "numbers": _number_masks(documents, numbers),
        "digests": _digests(documents),
    }
    signed = _sign(documents, file_index, signing) if signing is not None else []
    lines = [d.model_dump_json().encode() for d in documents]
    return [meta, lines, origins, *signed]


@ray.remote
def _minhash_reduce(ranks: np.ndarray, alive: np.ndarray, bases: np.ndarray, *parts: np.ndarray) -> np.ndarray:
    """One partition's candidate pairs, by global index, among the documents still alive."""
    rows = np.concatenate(parts) if parts else np.zeros(0, dtype=BAND_ROW)
    rows["doc"] = bases[rows["doc"] >> 32] + (rows["doc"] & 0xFFFFFFFF)
    rows = rows[alive[rows["doc"]]]
    return partition_pairs([rows], ranks, len(alive))


@ray.remote
def _verify(pairs: np.ndarray, threshold: float, verify: str, bases: list[int], *slices: tuple) -> np.ndarray:
    """(i, j, similarity) rows of the pairs that reach the threshold; `slices` (files starting at `bases`) hold
    every document named."""
    docs = np.concatenate([s[0] + base for s, base in zip(slices, bases, strict=True)])
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


def _signing(config: PipelineConfig) -> Signing | None:
    """How to sign documents as they load, when MinHash runs on the cluster in this stage; else None."""
    dedup = config.dedup
    if "minhash" not in method_sequence(dedup.method) or dedup.index == "redis":
        return None
    bands, rows = lsh_params(dedup.jaccard_threshold, dedup.num_perm, dedup.bands)
    partitions = config.execution.shuffle_partitions or cluster_cpus()
    return Signing(dedup.shingle_size, dedup.num_perm, bands, rows, partitions)


def _units(config: PipelineConfig) -> list[tuple[Path, str, Part | None]]:
    """(path, relative path, part or None) of every load task: a file, or each part of a big JSON Lines file
    (`execution.load_part_bytes`), in input order."""
    units: list[tuple[Path, str, Part | None]] = []
    for path, relative in input_files(config.data):
        try:
            kind = _kind(path, config.data, relative)
            parts = file_parts(path, kind, config.execution.load_part_bytes) if kind is not None else None
        except (OSError, UnreadableFile):
            parts = None  # the load task reads it whole and reports what is wrong with it
        units.extend((path, relative, part) for part in parts or [None])
    return units


def _merge_part(first: FileSummary, later: FileSummary) -> None:
    """A later part's summary line added to its file's (the file is one line in the manifest and the report)."""
    first.records += later.records
    first.documents += later.documents
    first.quarantined += later.quarantined
    if later.status == "failed" and first.status != "failed":
        first.status, first.reason = later.status, later.reason


def _load(config: PipelineConfig, address: str, signing: Signing | None) -> tuple[IngestResult, Plan]:
    data = config.data
    units = _units(config)
    returns = 3 + (1 + signing.partitions if signing else 0)
    task = _load_file.options(num_returns=returns, max_retries=config.execution.task_retries)
    # absolute: a Ray worker runs in a folder of its own (and on another node, where data.path must be the same path)
    ids = ids_for_shared_stems(list(dict.fromkeys(relative for _, relative, _ in units)))
    refs = [
        task.remote(
            str(path.resolve()), str(path), relative, data, index, signing, part, _wants_numbers(config),
            ids.get(relative),
        )
        for index, (path, relative, part) in enumerate(units)
    ]  # fmt: skip
    if len(units) > len({relative for _, relative, _ in units}):
        log.info("files_split", engine="ray", files=len({r for _, r, _ in units}), load_tasks=len(units))
    merged = IngestResult()
    plan = Plan()
    seen: set[str] = set()
    alive: list[np.ndarray] = []
    summaries: dict[str, FileSummary] = {}
    base = 0
    for (path, relative, unit), (meta_ref, lines_ref, origins_ref, *signed) in zip(units, refs, strict=True):
        meta = fetch(meta_ref, address)
        part: IngestResult = meta["result"]
        if unit is not None and unit.start > 0:
            _merge_part(summaries[relative], part.files[0])
        else:
            summaries[relative] = part.files[0]
            merged.files.extend(part.files)
        merged.rejects.extend(part.rejects)
        merged.records_seen += part.records_seen
        merged.repairs.update(part.repairs)
        load = FileLoad(part, meta["ids"], meta["lengths"], meta["richness"], meta["numbers"], meta["digests"],
                        lines_ref, origins_ref, base, str(path), signed)  # fmt: skip
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
            summaries[relative].documents -= len(repeated)
            summaries[relative].quarantined += len(repeated)
        alive.append(mask)
        plan.files.append(load)
        plan.keys.extend(load.ids, load.lengths, load.richness, load.numbers)
        base += len(load.ids)
    plan.alive = np.concatenate(alive) if alive else np.zeros(0, dtype=bool)
    plan.loaded = plan.alive.copy()
    merged.loaded = int(plan.alive.sum())
    log.info("documents_loaded", engine="ray", **{k: v for k, v in merged.counts().items() if v})
    return merged, plan


def _held(ingested: IngestResult, signing: Signing | None, numbers: bool) -> tuple[IngestResult, Plan]:
    """Documents read in this process, put in the object store as one shard (and signed there)."""
    documents = ingested.documents
    lines = ray.put([d.model_dump_json().encode() for d in documents])
    signed = []
    if signing is not None:
        signed = _sign_task.options(num_returns=1 + signing.partitions).remote(ray.put(documents), 0, signing)
    lengths = np.fromiter((len(d.text) for d in documents), dtype=np.int64, count=len(documents))
    rich = np.fromiter((richness(d) for d in documents), dtype=np.int64, count=len(documents))
    masks = _number_masks(documents, numbers)
    load = FileLoad(
        IngestResult(), [d.id for d in documents], lengths, rich, masks, _digests(documents), lines, None, 0, "",
        list(signed),
    )  # fmt: skip
    alive = np.ones(len(documents), dtype=bool)
    plan = Plan(files=[load], alive=alive, loaded=alive.copy())
    plan.keys.extend(load.ids, lengths, rich, masks)
    ingested.documents, ingested.loaded = [], len(documents)
    return ingested, plan


def _exact(plan: Plan, config: PipelineConfig) -> list[DuplicateCluster]:
    """Each alive document whose key an earlier alive one has, paired with the first such one (input order)."""
    empty = np.zeros(0, dtype="V32")
    digests = np.concatenate([f.digests for f in plan.files]) if plan.files else empty
    alive = np.flatnonzero(plan.alive)
    _, first, inverse = np.unique(digests[alive], return_index=True, return_inverse=True)
    earliest = alive[first[inverse.reshape(-1)]]
    copies = earliest != alive
    pairs = [(int(i), int(j), 1.0) for i, j in zip(earliest[copies].tolist(), alive[copies].tolist(), strict=True)]
    return clusters_from_pairs(plan.keys, pairs, "exact", config.dedup.keep)


def _minhash(plan: Plan, config: PipelineConfig, address: str, signing: Signing) -> list[DuplicateCluster]:
    """Candidates from the band rows the load tasks sent to each partition (the shuffle), among the documents
    still alive; verified by one task per file that has pairs; the kept-document rule over the verified pairs."""
    dedup, execution = config.dedup, config.execution
    threshold = dedup.jaccard_threshold
    if plan.alive.sum() < 2:
        return []
    ranks_ref = ray.put(np.asarray(keep_ranks(plan.keys, dedup.keep), dtype=np.int64))
    alive_ref = ray.put(plan.alive)
    bases = np.asarray([f.base for f in plan.files], dtype=np.int64)
    bases_ref = ray.put(bases)
    retries = {"max_retries": execution.task_retries}
    reduce = _minhash_reduce.options(**retries)
    reducers = [
        reduce.remote(ranks_ref, alive_ref, bases_ref, *[f.signed[1 + p] for f in plan.files])
        for p in range(signing.partitions)
    ]
    pairs = unique_pairs(list(fetch(reducers, address)), plan.n)
    file_of = np.repeat(np.arange(len(plan.files)), [len(f.ids) for f in plan.files])
    verifying = []
    owner = file_of[pairs[:, 0]] if len(pairs) else np.zeros(0, dtype=np.int64)
    for k in np.unique(owner).tolist():
        mine = pairs[owner == k]
        needed = [k, *sorted(set(file_of[mine[:, 1]].tolist()) - {k})]
        verifying.append(
            _verify.options(**retries).remote(
                mine,
                threshold,
                dedup.verify,
                [int(bases[n]) for n in needed],
                *[plan.files[n].signed[0] for n in needed],
            )
        )
    verified = [(int(i), int(j), float(sim)) for block in fetch(verifying, address) for i, j, sim in block.tolist()]
    shuffle_bytes = plan.n * signing.bands * BAND_ROW.itemsize
    log.info("minhash_distributed", files=len(plan.files), partitions=signing.partitions, candidates=len(pairs),
             verified=len(verified), shuffle_bytes=shuffle_bytes)  # fmt: skip
    return clusters_by_kept(plan.keys, sorted(verified), "minhash", dedup.keep)


def _remove(plan: Plan, clusters: list[DuplicateCluster]) -> int:
    index = {doc_id: i for i, doc_id in enumerate(plan.keys.ids) if plan.alive[i]}
    removed = 0
    for cluster in clusters:
        for member in cluster.members:
            if member != cluster.kept and plan.alive[index[member]]:
                plan.alive[index[member]] = False
                removed += 1
    return removed


def _documents(plan: Plan, address: str, wanted: np.ndarray | None = None, task: Any = None) -> list[Any]:
    """The alive documents (or those of `wanted`, a mask), in input order, fetched file by file; or what `task`
    (a remote function of a file's lines and its mask, `_word_sets`) makes of them where they are."""
    mask = plan.alive if wanted is None else wanted
    parts = []
    for load in plan.files:
        mine = mask[load.base : load.base + len(load.ids)]
        if mine.any():
            parts.append((task or _select).remote(load.lines, mine))  # filtered where the documents are
    return [d for chunk in fetch_each(parts, address) for d in chunk]


def _selected(lines: list[bytes], mask: np.ndarray) -> list[Document]:
    """The documents of a file's output lines that `mask` keeps."""
    return [Document.model_validate_json(line) for line, keep in zip(lines, mask.tolist(), strict=True) if keep]


@ray.remote
def _select(lines: list[bytes], mask: np.ndarray) -> list[Document]:
    return _selected(lines, mask)


@ray.remote
def _word_sets(lines: list[bytes], mask: np.ndarray) -> list[np.ndarray]:
    return [word_set(document.text) for document in _selected(lines, mask)]


@ray.remote(num_cpus=0)
def _texts(lines: list[bytes], mask: np.ndarray, size: int) -> Any:
    """The texts of a file's documents in `mask`, in shards of `size` (the task's `num_returns` objects). No CPU
    reserved: the embedding actors that wait for these shards hold one CPU each, and may hold every CPU of the
    cluster (a task that needed one would then wait for them, and they for it)."""
    texts = [document.text for document in _selected(lines, mask)]
    shards = [texts[i : i + size] for i in range(0, len(texts), size)]
    return shards[0] if len(shards) == 1 else shards


class _KeptDocuments(Sequence[Document | DocumentKey]):
    """The documents still kept, in input order, as the semantic step reads them on Ray: each one's key (id, length,
    metadata richness) from the plan's columns, its text left in the object store except where `fetch` brought it
    here (a judge reads the two texts of each pair it asks about). `shards` and `texts`: the texts in shards for
    the embedding actors, read by tasks where the files' lines are."""

    def __init__(self, plan: Plan, address: str) -> None:
        self.plan, self.address = plan, address
        self.rows = np.flatnonzero(plan.alive)
        self.fetched: dict[int, Document] = {}
        self.word_sets: dict[int, np.ndarray] = {}  # text.word_set by position (the words rule's pairs' members)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Document | DocumentKey:  # type: ignore[override]
        found = self.fetched.get(index)
        return found if found is not None else self.plan.keys[int(self.rows[index])]

    def fetch(self, indices: set[int]) -> None:
        positions = sorted(indices - self.fetched.keys())
        found = _documents(self.plan, self.address, self._mask(positions))  # in input order: the positions' order
        self.fetched.update(zip(positions, found, strict=True))

    def read_word_sets(self, indices: set[int]) -> None:
        """The `word_set` of each of these positions' texts (`word_sets`), made by tasks where the texts are; not
        for those whose text is here already (`fetched`: the words rule reads it)."""
        positions = sorted(indices - self.word_sets.keys() - self.fetched.keys())
        found = _documents(self.plan, self.address, self._mask(positions), _word_sets)
        self.word_sets.update(zip(positions, found, strict=True))

    def _mask(self, positions: list[int]) -> np.ndarray:
        wanted = np.zeros(self.plan.n, dtype=bool)
        wanted[self.rows[positions]] = True
        return wanted

    def shards(self, size: int) -> list[tuple[FileLoad, np.ndarray, int]]:
        """How the texts go to the embedding actors, in order: (a file, its documents still kept, how many shards
        of at most `size` texts they make). A file's documents never share a shard with another file's: one task
        per file reads its lines once (`texts`)."""
        shards = []
        for load in self.plan.files:
            mine = self.plan.alive[load.base : load.base + len(load.ids)]
            count = int(mine.sum())
            if count:
                shards.append((load, mine, -(-count // size)))
        return shards

    @staticmethod
    def texts(shards: list[tuple[FileLoad, np.ndarray, int]], size: int) -> list[Any]:
        """ObjectRefs of the shards' lists of texts, read from the store where the files' lines are."""
        refs: list[Any] = []
        for load, mine, parts in shards:
            made = _texts.options(num_returns=parts).remote(load.lines, mine, size)
            refs.extend([made] if parts == 1 else made)
        return refs


def load_and_deduplicate(
    config: PipelineConfig, outputs: dict[str, Path], judge: SemanticJudge | None = None
) -> tuple[IngestResult, DedupResult, int]:
    """The stage's work on Ray; writes the stage's outputs. Returns what was loaded (its `documents` empty),
    the dedup result (its `kept` empty unless a driver-side method needed the documents) and the count kept.
    The Ray driver runs in a child process of its own (engine/driver.py). `judge`: semantic_action judge's."""
    from llm_pipeline.engine.driver import in_driver

    monitoring = config.monitoring
    return in_driver(
        config.execution,
        "llm_pipeline.engine.ray_dedup:_load_and_deduplicate",
        config,
        outputs,
        judge,
        log_level=monitoring.log_level,
        structured=monitoring.structured_logging,
    )


def _load_and_deduplicate(
    config: PipelineConfig, outputs: dict[str, Path], judge: SemanticJudge | None = None
) -> tuple[IngestResult, DedupResult, int]:
    with ray_session(config.execution) as address:
        signing = _signing(config)
        if config.data.limit is not None:
            # a quick run: read in order up to the limit here (a file-parallel read would read past it)
            ingested, plan = _held(load_documents(config.data), signing, _wants_numbers(config))
        else:
            ingested, plan = _load(config, address, signing)
        write_jsonl(outputs["rejects"], ingested.rejects)
        require_documents(ingested, config.data)
        total = int(plan.alive.sum())
        dedup = config.dedup
        result = DedupResult(kept=[])
        methods = list(method_sequence(dedup.method))
        distributed = {"exact": lambda: _exact(plan, config)}
        if signing is not None:  # (with the shared Redis index, MinHash runs as it is, in the driver)
            distributed["minhash"] = lambda: _minhash(plan, config, address, signing)
        if dedup.embedding_cache is None:  # (with a cache, one folder, on the documents fetched here)
            # on the documents still kept, their texts left in the store (the actors read them there); the driver
            # holds their keys, the vectors once, the pairs, and the texts of the pairs a judge reads
            semantic = _semantic_on_actors(address, config)
            distributed["semantic"] = lambda: semantic_step(
                result, _KeptDocuments(plan, address), semantic, dedup, judge
            )
        while methods and methods[0] in distributed:
            method = methods.pop(0)
            clusters = distributed[method]()
            if method == "semantic" and dedup.semantic_action == "review":
                continue  # listed for review (semantic_step), nothing removed
            result.clusters.extend(clusters)
            result.removed_by_method[method] = _remove(plan, clusters)
            log.info("dedup_method_done", method=method, engine="ray", clusters=len(clusters),
                     removed=result.removed_by_method[method], remaining=int(plan.alive.sum()))  # fmt: skip
        if methods:  # plug-in methods, and semantic with an embedding cache: on the documents fetched here
            result.kept = _documents(plan, address)
            run_methods(result, tuple(methods), dedup, judge=judge)
            write_jsonl(outputs["documents"], result.kept)
            kept = len(result.kept)
        else:
            kept = _write_alive(plan, outputs["documents"], address)
        _write_examples(plan, result, config, outputs["examples"], address)
        write_jsonl(outputs["clusters"], result.clusters)
        ingested.loaded = total
        return ingested, result, kept


@ray.remote(num_cpus=1)
class _Embedder:
    """Loads the embedding model once; embeds the shards it is handed. One CPU, one torch thread: actors on one
    node do not fight over cores (two 2-thread torch processes slow each other 2-20x on 2 cores)."""

    def __init__(self, name: str, device: str, backend: str, max_seq_length: int):
        import torch

        from llm_pipeline.models.embeddings import load_embedder

        torch.set_num_threads(1)
        self.model = load_embedder(name, device, backend, max_seq_length)  # type: ignore[arg-type]

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        return self.model.encode(texts, batch_size)


@ray.remote
def _pairs_between(
    left: np.ndarray, left_start: int, right: np.ndarray, right_start: int, threshold: float
) -> list[tuple[int, int, float]]:
    """The exact search of two blocks of vectors (`semantic.pairs_between`): the task holds those two only."""
    from llm_pipeline.dedup.semantic import pairs_between

    return pairs_between(left, left_start, right, right_start, threshold)


@ray.remote
def _ivf_pairs(
    index: bytes, threshold: float, rescore: tuple | None, bases: list[int], probed: list | None, *blocks: np.ndarray
) -> list:
    """The ivf search from a run of blocks of vectors (rows from `bases` on), BLOCK_ROWS rows at a time, against
    one part of the index (serialized by faiss: opened once for the run), on one thread (the task holds one CPU).
    `probed`: with a sharded index, the run's coarse search (`_ivf_coarse`), shared by the tasks of every part.
    Each pair found is re-scored on its rows' float vectors: the block's own, and for a row of the part, a
    quantized part's float vectors (`rescore`: its rows and their vectors, from `_ivf_part`) or a flat part's own
    (stored as they are, read through a row-number map built once here)."""
    import faiss

    from llm_pipeline.dedup.semantic import BLOCK_ROWS, ivf_block_pairs

    faiss.omp_set_num_threads(1)
    opened = faiss.deserialize_index(index)
    if rescore is None:  # flat: the part holds its rows' float32 vectors under their row numbers
        opened.set_direct_map_type(faiss.DirectMap.Hashtable)
        others = opened.reconstruct_batch
    else:
        rows, floats = rescore

        def others(ids: np.ndarray) -> np.ndarray:
            return floats[np.searchsorted(rows, ids)]

    found = []
    for b, (base, vectors) in enumerate(zip(bases, blocks, strict=True)):
        lookup = _rescoring(vectors, base, others)
        found.extend(
            ivf_block_pairs(opened, vectors, start, threshold, probed[b][k] if probed else None, base, lookup)
            for k, start in enumerate(range(0, len(vectors), BLOCK_ROWS))
        )
    return found


def _rescoring(vectors: np.ndarray, base: int, others: Callable[[np.ndarray], np.ndarray]) -> Any:
    """The float vector of each row of a pair an index part found from a block: the block's own (rows from `base`
    on), else the part's (`others` by row number): a row the part's search found is in the part."""

    def lookup(ids: np.ndarray) -> np.ndarray:
        found = np.empty((len(ids), vectors.shape[1]), dtype=np.float32)
        mine = (ids >= base) & (ids < base + len(vectors))
        found[mine] = vectors[ids[mine] - base]
        if not mine.all():
            found[~mine] = others(np.ascontiguousarray(ids[~mine], dtype=np.int64))
        return found

    return lookup


@ray.remote
def _ivf_coarse(quantizer: bytes, probes: int, keep: bool, *blocks: np.ndarray) -> tuple:
    """A run of blocks' coarse search, BLOCK_ROWS rows at a time (each row's nearest cells, `keep`: for every part
    of a sharded index to search with, a list a block) and each row's own cell, which the driver cuts the index by:
    the task holds the centroids and its blocks."""
    import faiss

    from llm_pipeline.dedup.semantic import BLOCK_ROWS, ivf_nearest, ivf_probed

    faiss.omp_set_num_threads(1)
    opened = faiss.deserialize_index(quantizer)
    probed, nearest = [], []
    for vectors in blocks:
        starts = range(0, len(vectors), BLOCK_ROWS)
        mine = [ivf_probed(opened, probes, vectors, start) for start in starts] if keep else None
        nearest += [ivf_nearest(opened, vectors, start, mine[k] if mine else None) for k, start in enumerate(starts)]
        probed.append(mine)
    return (probed if keep else None), np.concatenate(nearest)


@ray.remote
def _rows_of(vectors: np.ndarray, rows: list[np.ndarray]) -> Any:
    """The block's vectors at each of the given lists of its rows (one object each: `num_returns` = len(rows))."""
    taken = [np.ascontiguousarray(vectors[wanted]) for wanted in rows]
    return taken[0] if len(taken) == 1 else tuple(taken)


@ray.remote
def _ivf_part(trained: bytes, rows: np.ndarray, cells: np.ndarray, *pieces: np.ndarray) -> tuple:
    """One part of the index filled from its rows' vectors (`pieces`, from the blocks in order), serialized into
    the object store for the search tasks (the driver never holds it); its size; and for a quantized index, the
    part's rows and float vectors, which its search re-scores pairs on (else None)."""
    import faiss

    from llm_pipeline.dedup.semantic import ivf_filled, quantized

    faiss.omp_set_num_threads(1)
    vectors = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
    filled = ivf_filled(faiss.deserialize_index(trained), vectors, rows, cells)
    part = faiss.serialize_index(filled)
    return part, len(part), ((rows, np.ascontiguousarray(vectors)) if quantized(filled) else None)


def _semantic_on_actors(address: str, config: PipelineConfig) -> Any:
    """Semantic dedup of the documents still kept (a `_KeptDocuments`), with its embeddings computed by actors that
    load the model once and take shards of `execution.embed_shard_texts` texts read from the store, in order, then
    cut by tasks into blocks of `execution.vector_block_rows` rows (`_vector_blocks`); the similarity search by
    tasks that each hold two blocks (exact) or a run of blocks and one part of the index (ivf); the keep rule in
    the driver, a judge's texts fetched for the pairs it may ask about. No process holds every vector (but for an
    index in one part, which is all of them: `ivf_shards: auto` keeps a part under 1 GiB), the driver none."""
    from llm_pipeline.dedup.clusters import PAIR_JUDGE, WORDS_APART
    from llm_pipeline.dedup.semantic import ivf_sample, uses_ivf

    def method(documents: _KeptDocuments, dedup: Any) -> list[DuplicateCluster]:
        if len(documents) < 2:
            return semantic_clusters(documents, [], dedup.keep)  # (a judge records that it was asked nothing)
        dedup = dedup.resolved_for(text_length(documents[i]) for i in range(len(documents)))  # as the workflow's
        size = config.execution.embed_shard_texts
        layout = documents.shards(size)
        restarts = config.execution.task_retries
        actors = [
            _Embedder.options(max_restarts=restarts, max_task_retries=restarts).remote(
                dedup.embedding_model, dedup.device, dedup.embedding_backend, dedup.max_seq_length
            )
            for _ in range(max(1, min(sum(parts for _, _, parts in layout), cluster_cpus())))
        ]
        # the actors may take every CPU before the tasks that read their texts run (`_texts` reserves none);
        # shards dealt round-robin: each actor's calls queue in order, and the answers come back in shard order
        shards = documents.texts(layout, size)
        refs = [actors[i % len(actors)].encode.remote(shard, dedup.batch_size) for i, shard in enumerate(shards)]
        sizes = [min(size, count - k * size) for _, mine, parts in layout for count in [int(mine.sum())]
                 for k in range(parts)]  # fmt: skip
        rows = sum(sizes)
        sample = ivf_sample(rows, dedup.ivf_lists) if uses_ivf(dedup.semantic_search, rows) else None
        try:
            blocks, training = _vector_blocks(refs, sizes, dedup.embedding_backend, sample, config, address)
        finally:
            for actor in actors:
                ray.kill(actor)
        del refs, shards, layout  # the shards' vectors leave the store: the blocks hold them
        log.info("semantic_embedded", engine="ray", actors=len(actors), texts=rows, blocks=len(blocks))
        pairs = _semantic_pairs(blocks, training, rows, dedup, address, config)
        members = {i for i, j, _ in pairs} | {j for i, j, _ in pairs}
        if PAIR_JUDGE.get() is not None:
            documents.fetch(members)
        if WORDS_APART.get() is not None and members:
            documents.read_word_sets(members)
        return semantic_clusters(documents, pairs, dedup.keep)

    return method


def _vector_blocks(
    refs: list, sizes: list[int], backend: str, sample: np.ndarray | None, config: PipelineConfig, address: str
) -> tuple[list, list]:
    """The embedding actors' shards (`refs`, of `sizes` rows, in order) cut into blocks of `execution.vector_block_rows`
    rows counted from the first (so a block's runs of BLOCK_ROWS rows are the local search's), each made `comparable` by
    a task, with the static backend's corpus mean computed by one task that reads the shards one at a time; and the
    rows of `sample` (ivf's training rows, ascending) that each block holds, handed over by the same task. Waits
    for the blocks (their rows, counted) before the actors go."""
    retries, step = config.execution.task_retries, config.execution.vector_block_rows
    mean = _mean.options(max_retries=retries).remote(refs) if backend == "static" else None
    ends = np.cumsum(sizes)
    starts = ends - np.asarray(sizes)
    make = _vector_block.options(max_retries=retries, num_returns=3)
    blocks, counts, training = [], [], []
    total = int(ends[-1])
    for first in range(0, total, step):
        last = min(first + step, total)
        lo, hi = int(np.searchsorted(ends, first, side="right")), int(np.searchsorted(starts, last, side="left"))
        wanted = (
            None if sample is None else sample[np.searchsorted(sample, first) : np.searchsorted(sample, last)] - first
        )
        block, count, taken = make.remote(backend, mean, wanted, first - int(starts[lo]), last - first, *refs[lo:hi])
        blocks.append(block)
        counts.append(count)
        if wanted is not None and len(wanted):
            training.append(taken)
    if sum(fetch(counts, address)) != total:
        raise RuntimeError("the blocks of vectors do not hold every row embedded")  # a bug, not an input
    return blocks, (blocks if sample is None else training)


RUN_BLOCKS = 16  # blocks of vectors an ivf search task takes at most (at 8,192 rows: 200 MB of MiniLM vectors)


@ray.remote(num_cpus=0)
def _mean(refs: list) -> np.ndarray:
    """The static backend's corpus mean (`semantic.corpus_mean`), the shards read one at a time (a list of refs:
    Ray does not fetch them all for the task). No CPU reserved: the actors may hold every CPU until it is done."""
    from llm_pipeline.dedup.semantic import corpus_mean

    return corpus_mean(ray.get(ref) for ref in refs)


@ray.remote(num_cpus=0)
def _vector_block(
    backend: str, mean: np.ndarray | None, sample: np.ndarray | None, cut: int, rows: int, *shards: np.ndarray
) -> tuple:
    """One block: `rows` rows from row `cut` of the shards given (those it overlaps), as the search compares them
    (`comparable`, with the corpus mean); its row count; and its rows of ivf's training `sample` (its own row
    numbers), or None. No CPU reserved (as `_mean`)."""
    from llm_pipeline.dedup.semantic import comparable

    pieces = []
    for shard in shards:  # only the rows it takes from each (a shard may be far larger than a block)
        pieces.append(shard[cut : cut + rows - sum(len(p) for p in pieces)])
        cut = 0
    vectors = np.concatenate(pieces).astype(np.float32, copy=False)  # its own copy: the store's are read-only
    vectors = comparable(vectors, backend, in_place=True, mean=mean)  # type: ignore[arg-type]
    return vectors, len(vectors), (None if sample is None else np.ascontiguousarray(vectors[sample]))


@ray.remote
def _ivf_train(rows: int, lists: int | None, probes: int, codec: str, *sample: np.ndarray) -> tuple:
    """The index's cells trained on the sample's rows (`ivf_sample`, gathered from the blocks in order: the local
    stage's), serialized with its quantizer, and its probes, cells and dimensions."""
    import faiss

    from llm_pipeline.dedup.semantic import ivf_trained_on

    # k-means on every core of its node, as the local stage trains it (Ray holds a task to one thread): nothing
    # else of the stage runs while the cells are trained
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    vectors = np.concatenate(sample) if len(sample) > 1 else sample[0]
    trained = ivf_trained_on(vectors, rows, lists, probes, codec)  # type: ignore[arg-type]
    return (
        faiss.serialize_index(trained),
        faiss.serialize_index(trained.quantizer),
        trained.nprobe,
        trained.nlist,
        trained.d,
    )


def _semantic_pairs(blocks: list, training: list, rows: int, dedup: Any, address: str, config: PipelineConfig) -> list:
    """The pairs (i < j) whose cosine reaches the threshold, as the local stage finds them, from the blocks of
    vectors (`rows` in all, comparable, `execution.vector_block_rows` a block): exact, by block pairs (a task per
    pair of blocks, the diagonal's included); ivf, the local stage's own index built apart (its cells trained on
    `training`, the sample's rows that the blocks handed over) and searched by runs of blocks, part by part."""
    from llm_pipeline.dedup.semantic import ivf_cut, ivf_parts, merged_pairs, uses_ivf

    threshold = dedup.cosine_threshold
    retries, step = config.execution.task_retries, config.execution.vector_block_rows
    first = [k * step for k in range(len(blocks))]
    if not uses_ivf(dedup.semantic_search, rows):
        search = _pairs_between.options(max_retries=retries)
        found = [
            search.remote(blocks[a], first[a], blocks[b], first[b], threshold)
            for a in range(len(blocks))
            for b in range(a, len(blocks))
        ]
        return sorted(pair for part in fetch(found, address) for pair in part)  # the local (i, j) order
    # the cells trained by a task on the sample's rows; each row's cell found by tasks that hold the centroids and
    # a run of blocks (with `ivf_shards`, with its coarse search, kept for every part); the index cut by cells into
    # parts; each block's rows of each part handed to the task that fills that part into the object store; then a
    # task for each run of blocks and part searches it. Runs of at most RUN_BLOCKS blocks, about four tasks a CPU
    # for every part: a search task opens its part once for the run (a task per block deserialized each part 25
    # times over on 200k documents instead of about twice; docs/benchmarks.md)
    train = _ivf_train.options(max_retries=retries, num_returns=5)
    empty, quantizer, nprobe, nlist, dimensions = train.remote(
        rows, dedup.ivf_lists, dedup.ivf_probes, dedup.ivf_codec, *training
    )
    nprobe, nlist, dimensions = fetch([nprobe, nlist, dimensions], address)
    shards = ivf_parts(dedup.ivf_shards, rows, dimensions, dedup.ivf_codec)
    keep = shards > 1
    per_task = min(RUN_BLOCKS, max(1, -(-len(blocks) * shards // (4 * cluster_cpus()))))
    runs = [range(k, min(k + per_task, len(blocks))) for k in range(0, len(blocks), per_task)]
    coarse = _ivf_coarse.options(max_retries=retries, num_returns=2)
    probed, nearest = zip(
        *(coarse.remote(quantizer, nprobe, keep, *(blocks[k] for k in run)) for run in runs), strict=True
    )
    cells = np.concatenate(fetch(list(nearest), address))
    parts = ivf_cut(cells, nlist, shards)
    if len(parts) == 1:
        pieces: list[list] = [list(blocks)]  # the one part is every row, in order: the blocks themselves
    else:
        split = _rows_of.options(max_retries=retries, num_returns=len(parts))
        pieces = [[] for _ in parts]
        for k, block in enumerate(blocks):
            bounds = [np.searchsorted(part, [first[k], first[k] + step]) for part in parts]
            mine = [part[lo:hi] - first[k] for part, (lo, hi) in zip(parts, bounds, strict=True)]
            for p, piece in enumerate(split.remote(block, mine)):
                pieces[p].append(piece)
    fill = _ivf_part.options(max_retries=retries, num_returns=3)
    indexes, sizes, rescores = zip(
        *(fill.remote(empty, part, cells[part], *pieces[p]) for p, part in enumerate(parts)), strict=True
    )
    sizes = fetch(list(sizes), address)
    log.info("semantic_ivf", engine="ray", parts=len(sizes), largest_part_bytes=max(sizes))
    search = _ivf_pairs.options(max_retries=retries)
    found = [
        search.remote(index, threshold, rescore, [first[k] for k in run], probed[r], *(blocks[k] for k in run))
        for index, rescore in zip(indexes, rescores, strict=True)
        for r, run in enumerate(runs)
    ]
    return merged_pairs(block for run in fetch(found, address) for block in run)


def _write_alive(plan: Plan, path: Path, address: str) -> int:
    with atomic_open(path, "wb") as handle:
        for load, lines in zip(plan.files, fetch_each([f.lines for f in plan.files], address), strict=True):
            mask = plan.alive[load.base : load.base + len(load.ids)].tolist()
            handle.write(b"".join(line + b"\n" for line, keep in zip(lines, mask, strict=True) if keep))
    return int(plan.alive.sum())


def _write_examples(plan: Plan, result: DedupResult, config: PipelineConfig, path: Path, address: str) -> None:
    from llm_pipeline.stages.load_and_deduplicate import EXAMPLE_CLUSTERS, cluster_examples

    everything = result.clusters + result.review
    shown = [c for c in everything if c.method != "semantic"][:EXAMPLE_CLUSTERS]
    wanted_ids = {m for c in shown for m in c.members[:3]} | {
        m for c in everything if c.method == "semantic" for m in c.members
    }
    wanted = plan.loaded & np.fromiter((i in wanted_ids for i in plan.keys.ids), dtype=bool, count=plan.n)
    documents = _documents(plan, address, wanted)
    write_json(path, cluster_examples(documents, everything, config.dedup, result.judgements, result.semantic))
