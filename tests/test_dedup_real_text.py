"""MinHash on real text that no one here wrote: the docstrings the installed packages ship (transformers' model
files copy whole docstrings between model families; scipy's and scikit-learn's are long and mostly distinct),
against exact all-pairs truth (word 5-gram Jaccard by an exact set-similarity join; the truth's words are written
apart from the method's tokenizer, to the same definition: whitespace words, edge punctuation stripped). With the
words agreed, a removal without a true partner means a removal that was not verified on the exact Jaccard, or a
chain through a removed document: none is allowed.
The figures on the whole corpus (72k documents) are in docs/benchmarks.md (`make bench-dedup-real`)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from llm_pipeline.config import DedupConfig
from llm_pipeline.dedup import deduplicate
from llm_pipeline.dedup.minhash import jaccard, near_duplicate_clusters, shingles
from llm_pipeline.ingest import normalize_text
from llm_pipeline.records import Document

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from real_text_corpus import TRUTH_FLOOR, debian_descriptions, python_docstrings, truth_pairs  # noqa: E402


@pytest.fixture(scope="module", params=["docstrings", "debian"])
def corpus(request: pytest.FixtureRequest) -> list[Document]:
    """Docstrings of three installed packages (long, markup-heavy), or this machine's Debian package descriptions
    (short: a library and its -dev, -doc, -prof packages; the corpus kind the issue measured)."""
    if request.param == "docstrings":
        records = python_docstrings(("transformers/models", "scipy", "sklearn"))
        assert len(records) > 10_000, "the locked environment ships these packages"
    else:
        try:
            records = debian_descriptions()
        except SystemExit as exc:
            pytest.skip(reason=f"no Debian package lists on this machine: {exc}")
        if len(records) < 20_000:
            held = f"apt's package lists hold {len(records)} packages (Debian main has ~63,000): apt-get update"
            pytest.skip(reason=held)
    return [Document(id=r["id"], text=normalize_text(r["text"])) for r in records]


def test_minhash_removes_only_what_it_claims_on_real_text(corpus: list[Document]) -> None:
    config = DedupConfig(method="minhash")
    result = deduplicate(corpus, config)
    kept = {d.id for d in result.kept}
    by_id = {d.id: d for d in corpus}
    index = {d.id: i for i, d in enumerate(corpus)}
    truth = truth_pairs([d.text for d in corpus])
    partnered = {i for pair in truth for i in pair}
    removals = [(m, c.kept) for c in result.clusters for m in c.members if m != c.kept]
    assert len(removals) > 200  # copied docstrings: there is something to find
    for removed, original in removals:
        assert original in kept, "removed only as the copy of a kept document (no chain)"
        size = config.shingle_size
        own = jaccard(shingles(by_id[removed].text, size), shingles(by_id[original].text, size))
        assert own >= config.jaccard_threshold, (removed, original, own)
    no_partner = [r for r, _ in removals if index[r] not in partnered]
    with_partner = sum(
        1 for r, k in removals if truth.get((min(index[r], index[k]), max(index[r], index[k])), 0) >= TRUTH_FLOOR
    )
    # whole corpora: 0 of 13,825 docstrings, 0 of 6,742 Debian descriptions (docs/benchmarks.md)
    assert no_partner == []
    assert with_partner == len(removals)
    at_threshold = [p for p, s in truth.items() if s >= config.jaccard_threshold]
    removed = {index[r] for r, _ in removals}
    recalled = sum(1 for i, j in at_threshold if i in removed or j in removed)
    assert recalled >= 0.95 * len(at_threshold)


def test_symbols_that_change_meaning_keep_documents_apart() -> None:
    """Debian's descriptions of gcc-multilib and g++-multilib: C and C++ are not the same word."""
    c = Document(id="gcc-multilib", text="GNU C compiler (multilib support) This is a dependency package.")
    cpp = Document(id="g++-multilib", text="GNU C++ compiler (multilib support) This is a dependency package.")
    le = Document(
        id="le", text="Compare two datetimes by when they occur in time: a <= b is a.instant() <= b.instant()"
    )
    ge = Document(
        id="ge", text="Compare two datetimes by when they occur in time: a >= b is a.instant() >= b.instant()"
    )
    assert near_duplicate_clusters([c, cpp, le, ge], threshold=0.6) == []


def test_words_are_counted_as_a_reader_counts_them() -> None:
    """Debian's one-word variants of short descriptions: a comma-joined list is one word, so one changed entry is
    one changed word (3 of 4 shingles shared, 0.6, when the list was split into three words); punctuation at a
    word's ends is not a word of its own."""
    meta = Document(id="meta", text="BLAS-like Library Instantiation Software Framework (dev,32bit,meta)")
    openmp = Document(id="openmp", text="BLAS-like Library Instantiation Software Framework (dev,32bit,openmp)")
    plain = Document(id="plain", text="convert ByteString<->Vector.Storable without copying")
    doc = Document(id="doc", text="convert ByteString<->Vector.Storable without copying; documentation")
    assert near_duplicate_clusters([meta, openmp, plain, doc], threshold=0.6) == []
    quoted = Document(id="quoted", text='"Convert ByteString<->Vector.Storable, without (copying)."')
    [cluster] = near_duplicate_clusters([plain, quoted], threshold=0.6)
    assert (cluster.kept, cluster.members) == ("plain", ["plain", "quoted"])
