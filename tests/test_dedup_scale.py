"""Dedup at scale: vectorized MinHash (same result whatever the process count), recall by edit rate on the
benchmark's realistic corpus, exact verification, a Redis-backed index shared by two workers, and the
embedding cache and ONNX backends of semantic dedup."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llm_pipeline.config import DedupConfig
from llm_pipeline.dedup import deduplicate
from llm_pipeline.dedup import minhash as mh
from llm_pipeline.dedup.clusters import clusters_by_kept
from llm_pipeline.models.embeddings import embed
from llm_pipeline.records import Document

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from synthetic_corpus import edit_words, make_corpus, unique_document  # noqa: E402


@pytest.fixture(scope="module")
def corpus() -> list[Document]:
    return [Document(id=r["id"], text=r["text"], metadata=r["metadata"]) for r in make_corpus(1200, seed=3)]


def test_signatures_do_not_depend_on_process_count(corpus, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mh, "PARALLEL_MIN_DOCUMENTS", 10)
    texts = [d.text for d in corpus[:300]]
    assert np.array_equal(mh.signatures(texts, processes=1), mh.signatures(texts, processes=2))


def test_signatures_are_the_same_with_parts_of_any_length(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parts are cut by characters: one huge text among small ones makes parts of a few texts and of many."""
    monkeypatch.setattr(mh, "PARALLEL_MIN_DOCUMENTS", 10)
    texts = [f"short text number {i} about charging" for i in range(40)]
    texts[3] = " ".join(f"word{i}" for i in range(20_000))
    assert [len(p) for p in mh._balanced_parts(texts, 2)] == [3, 37]  # the huge one starts the second part
    assert np.array_equal(mh.signatures(texts, processes=1), mh.signatures(texts, processes=3))


def test_exact_counts_are_made_only_where_they_can_remove_something(corpus) -> None:
    """The kept-document rule confirms a candidate pair only when its earlier document was kept: the same
    clusters as confirming every candidate first, with fewer exact counts."""
    sigs, sets = mh.shingle_signatures([d.text for d in corpus], processes=1)
    bands, rows = mh.lsh_params(0.6, 128)
    candidates = mh.hopeful_pairs(sigs, mh.candidate_pairs(sigs, bands, rows), 0.6)
    confirm = mh.exact_confirmation(corpus, 0.6, 5, sets)
    asked: list[tuple[int, int]] = []

    def counted(i: int, j: int) -> float | None:
        asked.append((i, j))
        return confirm(i, j)

    every = [(i, j, s) for i, j, _ in candidates if (s := confirm(i, j)) is not None]
    assert clusters_by_kept(corpus, candidates, "minhash", "first", counted) == clusters_by_kept(
        corpus, every, "minhash", "first"
    )
    assert len(every) > 100 and len(asked) < len(candidates)


def test_signature_estimates_track_true_jaccard() -> None:
    import random

    rng = random.Random(5)
    base = unique_document(rng)
    for rate in (0.01, 0.05, 0.1, 0.3):
        edited = edit_words(base, rate, rng)
        sigs = mh.signatures([base, edited], num_perm=256, processes=1)
        estimate = float((sigs[0] == sigs[1]).mean())
        true = mh.jaccard(mh.shingles(base, 5), mh.shingles(edited, 5))
        assert abs(estimate - true) < 0.1, (rate, estimate, true)


def test_minhash_finds_copies_up_to_five_percent_edits_and_nothing_else(corpus) -> None:
    """Word 5-shingles at 0.6 (the defaults, chosen on real text): every exact copy, nearly every copy with 1-3 %
    of its words edited, most at 5 %; a short document with one word in twenty changed falls under 0.6 by design
    (10 % edits are semantic's, in hybrid). And nothing that is not a copy."""
    result = deduplicate(corpus, DedupConfig(method="minhash"))
    removed = {d.id for d in corpus} - {d.id for d in result.kept}
    truth = {d.id: d.metadata.get("truth") for d in corpus}
    kinds = {d.id: d.metadata.get("kind") for d in corpus}
    originals_with_copies = {t for t in truth.values() if t}
    for cluster in result.clusters:  # precision: every cluster is one true group
        assert len({truth[m] or m for m in cluster.members}) == 1, cluster
    assert not removed - set(truth) - originals_with_copies
    for kind, share in (("exact", 1.0), ("edit-1", 0.95), ("edit-3", 0.95), ("edit-5", 0.85)):
        copies = [i for i, k in kinds.items() if k == kind]
        found = [c for c in copies if any(c in cl.members and truth[c] in cl.members for cl in result.clusters)]
        assert len(found) >= share * len(copies), (kind, len(found), len(copies))


def test_exact_verification_uses_true_jaccard(corpus) -> None:
    estimated = deduplicate(corpus[:400], DedupConfig(method="minhash", verify="estimated")).clusters
    exact = deduplicate(corpus[:400], DedupConfig(method="minhash", verify="exact")).clusters
    by_id = {d.id: d for d in corpus}
    size, threshold = DedupConfig().shingle_size, DedupConfig().jaccard_threshold
    for cluster in exact:  # every removed member reaches the threshold with the kept one, by its own shingles
        kept = mh.shingles(by_id[cluster.kept].text, size)
        for member in cluster.members[1:]:
            true = mh.jaccard(kept, mh.shingles(by_id[member].text, size))
            assert true >= threshold and true == pytest.approx(cluster.to_kept[member], abs=1e-4)
    assert exact and len(exact) >= len(estimated) // 2  # exact verification still finds the copies


def test_redis_index_is_shared_by_two_workers(corpus, redis_url: str) -> None:
    config = DedupConfig(method="minhash", index="redis", redis_url=redis_url)
    originals = [d for d in corpus if not d.metadata.get("truth")][:200]
    by_id = {d.id: d for d in corpus}
    copies = [
        d
        for d in corpus
        if d.metadata.get("kind") in ("exact", "edit-1") and d.metadata["truth"] in {o.id for o in originals}
    ]
    assert copies
    first = deduplicate(originals, config)  # worker A indexes the originals
    assert first.kept == originals
    second = deduplicate(copies + [by_id[c.metadata["truth"]] for c in copies[:1]], config)  # worker B
    kept = {d.id for d in second.kept}
    assert not kept & {c.id for c in copies}  # every copy matched an original indexed by worker A
    indexed_by_a = {o.id for o in originals}
    for copy in copies:  # each copy is tied to the original that worker A indexed, which is kept
        assert any(copy.id in c.members and c.kept == copy.metadata["truth"] for c in second.clusters), copy.id
    assert all(c.kept in indexed_by_a for c in second.clusters if set(c.members) & indexed_by_a)


def test_redis_index_rerun_removes_the_same_documents(corpus, redis_url: str) -> None:
    batch = corpus[:300]
    basename = f"rerun-{uuid.uuid4().hex[:8]}"
    threshold = DedupConfig().jaccard_threshold

    def removed() -> set[str]:
        clusters = mh.near_duplicate_clusters(batch, threshold, redis_url=redis_url, redis_basename=basename)
        return {m for c in clusters for m in c.members if m != c.kept}

    first, second = removed(), removed()
    assert first and first == second  # the index holds kept documents only, so a rerun decides the same
    in_memory = deduplicate(batch, DedupConfig(method="minhash"))
    assert first == {d.id for d in batch} - {d.id for d in in_memory.kept}


def test_embedding_cache_never_embeds_a_text_twice(tmp_path: Path) -> None:
    texts = [
        "Fast charging costs more at highway stations.",
        "Level 2 chargers deliver 7 kW.",
        "Fast charging costs more at highway stations.",
    ]
    first: dict[str, int] = {}
    vectors = embed(texts, cache=tmp_path, stats=first)
    assert first == {"computed": 2, "cached": 0}
    again: dict[str, int] = {}
    cached = embed(texts + ["Solar canopies shade parked cars."], cache=tmp_path, stats=again)
    assert again == {"computed": 1, "cached": 2}
    assert np.allclose(cached[:3], vectors, atol=1e-6)


@pytest.mark.parametrize(("backend", "agreement"), [("onnx", 0.999), ("onnx-int8", 0.97)])
def test_onnx_backends_agree_with_torch(
    backend: str, agreement: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llm_pipeline.models.embeddings as embeddings

    monkeypatch.setattr(embeddings, "ONNX_CACHE", tmp_path)
    embeddings.load_embedder.cache_clear()
    texts = [unique_document(__import__("random").Random(i), words=80) for i in range(12)]
    reference = embed(texts, backend="torch", max_seq_length=128)
    vectors = embed(texts, backend=backend, max_seq_length=128)
    cosines = (reference * vectors).sum(axis=1)
    assert cosines.min() >= agreement, cosines
    embeddings.load_embedder.cache_clear()


def test_static_backend_separates_copies_from_unrelated_documents(
    corpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llm_pipeline.models.embeddings as embeddings

    monkeypatch.setattr(embeddings, "ONNX_CACHE", tmp_path / "onnx")  # the distilled table lands beside it
    embeddings.load_embedder.cache_clear()
    sample = corpus[:600]
    result = deduplicate(sample, DedupConfig(method="semantic", embedding_backend="static"))
    truth = {d.id: d.metadata.get("truth") or d.id for d in sample}
    for cluster in result.clusters:  # precision: no cluster mixes unrelated documents
        assert len({truth[m] for m in cluster.members}) == 1, cluster
    small_edits = [
        d for d in sample if d.metadata.get("kind") in ("exact", "edit-1", "edit-3") and d.metadata["truth"] in truth
    ]
    found = [d for d in small_edits if any(d.id in c.members for c in result.clusters)]
    assert small_edits and len(found) == len(small_edits)
    assert (tmp_path / "static").is_dir()
    embeddings.load_embedder.cache_clear()


def test_the_default_backend_is_the_contextual_model_up_to_the_cutoff_and_static_above(
    corpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`embedding_backend: auto` (the default) gives what naming the backend gives, each side of the cutoff (here
    moved to the sample's windows; 5,000 in use), thresholds included; on a GPU always the model. The cutoff counts
    windows, not documents: a corpus of long documents costs the model as many passes as it has windows."""
    import llm_pipeline.config as config_module
    import llm_pipeline.models.embeddings as embeddings

    monkeypatch.setattr(embeddings, "ONNX_CACHE", tmp_path / "onnx")
    embeddings.load_embedder.cache_clear()
    sample = corpus[:200]
    static = deduplicate(sample, DedupConfig(method="semantic", embedding_backend="static")).clusters
    contextual = deduplicate(sample, DedupConfig(method="semantic", embedding_backend="torch")).clusters
    assert static and contextual and static != contextual
    windows = DedupConfig().windows_of(len(d.text) for d in sample)
    assert windows >= len(sample)
    monkeypatch.setattr(config_module, "AUTO_CONTEXTUAL_MAX_DOCS", windows - 1)
    assert deduplicate(sample, DedupConfig(method="semantic")).clusters == static
    monkeypatch.setattr(config_module, "AUTO_CONTEXTUAL_MAX_DOCS", windows)
    assert deduplicate(sample, DedupConfig(method="semantic")).clusters == contextual
    assert DedupConfig(device="cuda").backend_for(10**7) == "torch"
    long = DedupConfig()  # 128 tokens: 126 a window, ~4 characters a token
    assert long.windows_of([100, 504, 505, 10**6]) == 1 + 1 + 2 + 16
    embeddings.load_embedder.cache_clear()


def test_ivf_search_reports_only_true_pairs_and_finds_nearly_all_on_real_text() -> None:
    """faiss's inverted lists against the exact search (every pair), on real docstrings embedded by the static
    backend and mean-centered as the stage compares them, at the static default 0.85, with the index's vectors as
    floats and as 8-bit codes: every pair ivf reports is an exact pair with its cosine to the bit (faiss's products
    re-scored), it finds at least 99 % of them, and the same vectors give the same pairs again (the Ray engine
    builds its own index from them and must agree), also from the index cut into parts by cells. sq8's index is
    under a third of flat's size. Measured on 83k docstrings: docs/benchmarks.md."""
    import faiss
    from real_text_corpus import python_docstrings

    from llm_pipeline.dedup.semantic import comparable, ivf_index, ivf_shards, ivf_trained, similar_pairs

    texts = [r["text"] for r in python_docstrings(("transformers/models",))[:4000]]
    vectors = comparable(embed(texts, backend="static"), "static")
    exact = {(i, j): s for i, j, s in similar_pairs(vectors, 0.85, "exact")}
    assert len(exact) > 500, "real docstrings copy each other: the search has pairs to find"
    for codec in ("flat", "sq8"):
        found = similar_pairs(vectors, 0.85, "ivf", codec=codec)
        for i, j, similarity in found:  # re-scored as the exact search keeps its candidates: its value, to the bit
            assert (i, j) in exact and similarity == exact[(i, j)], (codec, i, j, similarity, exact.get((i, j)))
        assert len({(i, j) for i, j, _ in found}) == len(found), "a pair found from both of its rows is one pair"
        assert len(found) >= 0.99 * len(exact), (codec, len(found), len(exact))
        assert similar_pairs(vectors, 0.85, "ivf", codec=codec) == found
        # the index cut by cells (each Ray search task holding one part): the same pairs, cosines to the bit
        assert similar_pairs(vectors, 0.85, "ivf", codec=codec, shards=3) == found
        parts = ivf_shards(vectors, 3, codec=codec)
        assert sum(p.ntotal for p in parts) == len(vectors) and max(p.ntotal for p in parts) < 0.5 * len(vectors)
        # the index built in steps (each row filed in its nearest cell by a block's search, then added to its
        # part: how the Ray engine builds it apart) is the index faiss's own `add` builds, to the stored byte
        whole, own = ivf_index(vectors, codec=codec), ivf_trained(vectors, codec=codec)
        own.add(vectors)
        assert _inverted_lists(whole) == _inverted_lists(own), codec
    size = {codec: len(faiss.serialize_index(ivf_index(vectors, codec=codec))) for codec in ("flat", "sq8")}
    assert size["sq8"] < size["flat"] / 3, size
    assert similar_pairs(vectors, 0.85, "auto") == sorted((i, j, s) for (i, j), s in exact.items())  # 4k: exact


def test_an_automatic_ivf_part_count_keeps_each_part_under_a_gib() -> None:
    """`ivf_shards: auto` (the default) on Ray: as many parts as keep a part's vectors under 1 GiB, so that at 10M
    documents no search task holds the whole index; a number set by hand is kept."""
    from llm_pipeline.dedup.semantic import IVF_PART_BYTES, ivf_parts

    assert ivf_parts("auto", 200_000, 384, "flat") == 1
    assert ivf_parts("auto", 10_000_000, 384, "flat") == 15  # 15.4 GB of float32
    assert ivf_parts("auto", 10_000_000, 384, "sq8") == 4  # one byte a dimension
    assert ivf_parts("auto", 10**9, 1024, "flat") == 256  # the most parts
    assert ivf_parts(3, 10_000_000, 384, "flat") == 3
    for rows in (1, 699_050, 699_051, 5_000_000):
        parts = ivf_parts("auto", rows, 384, "flat")
        assert -(-rows // parts) * 384 * 4 <= IVF_PART_BYTES * 1.01 and (parts == 1 or rows * 1536 > IVF_PART_BYTES)


def test_vectors_cut_into_blocks_give_the_whole_matrixs_mean_and_pairs_to_the_bit() -> None:
    """The Ray engine keeps the vectors in blocks and never stacks them: the static backend's corpus mean, streamed
    over pieces cut anywhere (across its fixed 65,536-row runs too), is the whole matrix's to the bit; and the exact
    search by pairs of blocks (2,048 rows; the last block a single row, where BLAS would take its matrix-vector
    path), in a process whose BLAS has one thread (a Ray worker's), gives the whole search's pairs, cosines to the
    bit. A float32 matrix product's last bits depend on the shapes and the threads (this failed so on an AMD EPYC)."""
    from threadpoolctl import threadpool_limits

    from llm_pipeline.dedup.semantic import corpus_mean, pairs_between, similar_pairs

    rng = np.random.default_rng(7)
    tall = rng.normal(size=(140_001, 8)).astype(np.float32)
    cuts = sorted(set(rng.integers(1, len(tall), size=12).tolist()) | {65_536, 65_537})
    assert np.array_equal(corpus_mean(np.split(tall, cuts)), corpus_mean([tall]))
    base = rng.normal(size=(2_600, 64)).astype(np.float32)
    vectors = np.vstack([base, base[:1_497] + rng.normal(scale=0.3, size=(1_497, 64)).astype(np.float32)])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    assert len(vectors) % 2048 == 1
    whole = similar_pairs(vectors, 0.9, "exact")
    assert len(whole) > 1_000, "the noisy copies are near their originals"
    first = list(range(0, len(vectors), 2048))
    blocks = [vectors[f : f + 2048].copy() for f in first]
    with threadpool_limits(1):
        by_blocks = sorted(
            pair
            for a in range(len(blocks))
            for b in range(a, len(blocks))
            for pair in pairs_between(blocks[a], first[a], blocks[b], first[b], 0.9)
        )
    assert by_blocks == whole


def test_a_rows_cell_from_the_coarse_search_is_the_one_faiss_files_it_under_even_among_equal_centroids() -> None:
    """The Ray engine files each row in the first column of its coarse search (already computed for the search)
    instead of searching the centroids again; where centroids tie (here: three copies of one), faiss's sorted
    search may put a later copy first, while its own `add` files the row under the first: the row must go there,
    or a sharded index on Ray differs from the local one."""
    import faiss

    from llm_pipeline.dedup.semantic import ivf_nearest, ivf_probed

    rng = np.random.default_rng(0)
    centroids = rng.normal(size=(8, 16)).astype(np.float32)
    centroids[5] = centroids[7] = centroids[2]
    quantizer = faiss.IndexFlatIP(16)
    quantizer.add(centroids)
    rows = np.vstack([centroids[2] + rng.normal(scale=0.01, size=(50, 16)), rng.normal(size=(50, 16))])
    rows = rows.astype(np.float32)
    probed = ivf_probed(quantizer, 4, rows, 0)
    assert (probed[0][:50, 0] != 2).any(), "the sorted search lists a later copy first: the case under test"
    expected = quantizer.search(rows, 1)[1][:, 0]
    assert (expected[:50] == 2).all()
    assert ivf_nearest(quantizer, rows, 0, probed).tolist() == expected.tolist()
    assert ivf_nearest(quantizer, rows, 0).tolist() == expected.tolist()


def _inverted_lists(index: Any) -> list[tuple[bytes, bytes]]:
    """Each cell's row ids and stored codes, as bytes."""
    import faiss

    lists, size = index.invlists, index.code_size
    return [
        (
            faiss.rev_swig_ptr(lists.get_ids(c), lists.list_size(c)).tobytes(),
            faiss.rev_swig_ptr(lists.get_codes(c), lists.list_size(c) * size).tobytes(),
        )
        for c in range(index.nlist)
    ]
