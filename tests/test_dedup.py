"""Deduplication: each method finds what it should, keeps one per cluster, and never drops a unique document."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_pipeline.config import DataConfig, DedupConfig
from llm_pipeline.dedup import deduplicate
from llm_pipeline.dedup.exact import exact_duplicate_clusters
from llm_pipeline.dedup.minhash import near_duplicate_clusters
from llm_pipeline.dedup.remove import remove_duplicates
from llm_pipeline.dedup.semantic import semantic_duplicate_clusters
from llm_pipeline.ingest import load_documents
from llm_pipeline.records import Document

ROOT = Path(__file__).resolve().parents[1]
BASE = (
    "Level 2 chargers deliver between seven and eleven kilowatts on a dedicated circuit at home, and most "
    "drivers find that an overnight session refills the battery for the next day of commuting around town."
)


def doc(i: str, text: str, **metadata: object) -> Document:
    return Document(id=i, text=text, metadata=dict(metadata))


def test_exact_ignores_case_only_for_hashing() -> None:
    docs = [doc("a", BASE), doc("b", BASE.upper()), doc("c", "Something else entirely.")]
    clusters = exact_duplicate_clusters(docs)
    assert len(clusters) == 1 and clusters[0].members == ["a", "b"] and clusters[0].kept == "a"
    kept = remove_duplicates(docs, clusters)
    assert [d.text for d in kept] == [BASE, "Something else entirely."]  # stored text keeps its case


def test_minhash_finds_a_near_copy_and_verifies_it() -> None:
    near = BASE.replace("overnight", "nightly")
    other = "Battery recycling recovers most of the lithium, nickel and cobalt from old packs in modern plants."
    clusters = near_duplicate_clusters([doc("a", BASE), doc("b", near), doc("c", other)], threshold=0.6)
    assert [c.members for c in clusters] == [["a", "b"]]
    assert 0.6 <= clusters[0].similarity < 1.0


def test_semantic_finds_a_paraphrase_that_minhash_misses() -> None:
    a = "The charging station is broken and cannot be used today."
    b = "The charger at the station is broken and cannot be used today."
    c = "Solar panels on the roof can power a home for most of the year."
    docs = [doc("a", a), doc("b", b), doc("c", c)]
    assert near_duplicate_clusters(docs, threshold=0.6) == []
    clusters = semantic_duplicate_clusters(docs, threshold=0.85, model="all-MiniLM-L6-v2")
    assert [c.members for c in clusters] == [["a", "b"]]


def test_keep_policies() -> None:
    docs = [doc("short", BASE, category="x"), doc("long", BASE + " ", source="s", category="x", title="t")]
    docs[1] = doc("long", BASE.replace("home", "home today"), source="s", category="x", title="t")
    for keep, expected in (("first", "short"), ("longest", "long"), ("richest_metadata", "long")):
        clusters = near_duplicate_clusters(docs, threshold=0.5, keep=keep)
        assert clusters[0].kept == expected, keep


def test_hybrid_on_sample_removes_exactly_the_planted_copies() -> None:
    documents = load_documents(DataConfig(path=ROOT / "data" / "ev_charging" / "documents.jsonl")).documents
    result = deduplicate(documents, DedupConfig(method="hybrid"))
    planted = {d.id: d.metadata["planted"].split(":")[1] for d in documents if "planted" in d.metadata}
    removed = {d.id for d in documents} - {d.id for d in result.kept}
    assert len(removed) == len(planted) == 30
    # Each removed document is a planted copy or the original of one (whichever came first is kept).
    assert removed <= set(planted) | set(planted.values())
    # And every planted copy shares a cluster with its original.
    for copy, original in planted.items():
        assert any(copy in c.members and original in c.members for c in result.clusters), copy


# --- properties -------------------------------------------------------------------------------------------
WORDS = [
    "charge",
    "battery",
    "station",
    "price",
    "plug",
    "grid",
    "solar",
    "cable",
    "range",
    "power",
    "home",
    "fast",
    "level",
    "network",
    "energy",
    "cost",
    "kwh",
    "city",
    "app",
    "card",
]
texts = st.lists(st.sampled_from(WORDS), min_size=3, max_size=30).map(" ".join)


@st.composite
def corpora(draw: st.DrawFn) -> list[Document]:
    unique = draw(st.lists(texts, min_size=1, max_size=12, unique=True))
    copies = draw(st.lists(st.integers(0, len(unique) - 1), max_size=6))
    all_texts = unique + [unique[i] for i in copies]
    order = draw(st.permutations(range(len(all_texts))))
    return [doc(f"d{k}", all_texts[i]) for k, i in enumerate(order)]


CONFIGS = [DedupConfig(method="exact"), DedupConfig(method="minhash")]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corpora(), st.sampled_from(CONFIGS))
def test_dedup_is_idempotent(documents: list[Document], config: DedupConfig) -> None:
    once = deduplicate(documents, config).kept
    twice = deduplicate(once, config).kept
    assert [d.id for d in twice] == [d.id for d in once]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corpora(), st.sampled_from(CONFIGS))
def test_dedup_keeps_exactly_one_per_cluster(documents: list[Document], config: DedupConfig) -> None:
    result = deduplicate(documents, config)
    kept = {d.id for d in result.kept}
    for cluster in result.clusters:
        assert cluster.kept in cluster.members
        assert [m for m in cluster.members if m in kept] == [cluster.kept]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corpora())
def test_exact_dedup_never_removes_a_document_without_a_copy(documents: list[Document]) -> None:
    result = deduplicate(documents, DedupConfig(method="exact"))
    kept_texts = {d.text.lower() for d in result.kept}
    assert kept_texts == {d.text.lower() for d in documents}  # every distinct text survives exactly once
    assert len(result.kept) == len(kept_texts)


def test_semantic_review_lists_the_pairs_and_removes_nothing() -> None:
    """`dedup.semantic_action: review`: semantic near-pairs are found and shown with both similarities, the
    documents all stay (for templated corpora, where embeddings cannot tell a copy from a sibling)."""
    from llm_pipeline.report import render_report
    from llm_pipeline.stages.load_and_deduplicate import cluster_examples

    a = "The charging station is broken and cannot be used today."
    b = "The charger at the station is broken and cannot be used today."
    c = "Solar panels on the roof can power a home for most of the year."
    docs = [doc("a", a), doc("b", b), doc("c", c)]
    config = DedupConfig(method="hybrid", semantic_threshold=0.85, semantic_action="review")
    result = deduplicate(docs, config)
    assert [d.id for d in result.kept] == ["a", "b", "c"] and result.clusters == []
    assert [(r.kept, list(r.to_kept)) for r in result.review] == [("a", ["b"])]
    assert result.counts(3)["review.semantic"] == 1
    examples = cluster_examples(docs, result.clusters + result.review, config, semantic=result.semantic)
    (pair,) = examples["semantic_removals"]
    assert pair["removed"] == "b" and pair["removed_from_output"] is False and pair["cosine"] >= 0.85
    assert 0 < pair["jaccard"] < 0.6 and set(pair["texts"]) == {"a", "b"}
    manifest = {"pipeline": "p", "run_id": "r", "config_hash": "h", "code_version": "v", "started_at": "t"}
    report = render_report(manifest, {}, examples, {})
    assert "### Semantic near-pairs to review (kept) (1;" in report and "| `b` | `a` |" in report
    # what compared them: `auto` resolved (3 documents: the contextual model) and the threshold it used
    assert result.semantic["embedding_backend"] == "torch" and result.counts(3)["semantic.cosine_threshold"] == 0.85
    assert "3 documents compared with `torch` embeddings" in report and "cosine >= 0.85" in report
    assert "pairs found: `review`" in report
