"""Semantic dedup's pair search, exact against ivf (faiss inverted lists), on real text no one here wrote.

    .venv/bin/python benchmarks/semantic_search_benchmark.py --sizes 20000 83065 --probes 8 16 32

The corpus: the docstrings the installed packages ship (benchmarks/real_text_corpus.py), the first N of them for
each size. They are embedded once with the static backend (timed apart: embedding is not the search) and compared
mean-centered, as the stage compares them. At each size: the exact search (every pair, block by block, the stage's
code) is the baseline and the truth; ivf at each number of probes, in the same run, reports seconds (training the
index included), pairs found, the share of the exact pairs it finds (pair recall), pairs it reports that the exact
search does not (must be 0), and the documents removed by the kept-document rule against the exact search's.
`--codecs flat sq8` measures the index's two ways of holding the vectors (float32, or 8-bit codes whose pairs are
re-scored on the floats), with the size of each index serialized (what a Ray search task holds in memory).

    .venv/bin/python benchmarks/semantic_search_benchmark.py --sizes 20000 83065 --probes 16 --codecs flat sq8

`--backend torch` embeds with the contextual model instead (the stage's `max_seq_length`, 128; about 30 documents a
second on 2 cores) and searches at its default cosine (0.95), for the recall of ivf on a model's vectors.

    .venv/bin/python benchmarks/semantic_search_benchmark.py --backend torch --sizes 10000 --probes 4 8 16
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
from real_text_corpus import python_docstrings  # noqa: E402

from llm_pipeline.config import DedupConfig  # noqa: E402
from llm_pipeline.dedup.clusters import clusters_by_kept  # noqa: E402
from llm_pipeline.dedup.semantic import (  # noqa: E402
    DEFAULT_PROBES,
    comparable,
    ivf_index,
    ivf_lists,
    ivf_shards,
    similar_pairs,
)
from llm_pipeline.models.embeddings import embed  # noqa: E402
from llm_pipeline.records import Document  # noqa: E402


def removed(documents: list[Document], pairs: list[tuple[int, int, float]]) -> set[str]:
    return {m for c in clusters_by_kept(documents, pairs, "semantic") for m in c.members if m != c.kept}


def index_bytes(vectors: np.ndarray, codec: str, parts: int = 1) -> int:
    """The serialized index's size (what a Ray search task reads); with `parts`, the largest part's."""
    import faiss

    indexes = [ivf_index(vectors, codec=codec)] if parts == 1 else ivf_shards(vectors, parts, codec=codec)
    return max(len(faiss.serialize_index(index)) for index in indexes)


def measure(
    vectors: np.ndarray,
    documents: list[Document],
    threshold: float,
    probes: list[int],
    codecs: list[str],
    shards: list[int] = (1,),
) -> list[dict]:
    started = time.perf_counter()
    exact = similar_pairs(vectors, threshold, "exact")
    exact_s = time.perf_counter() - started
    truth = {(i, j) for i, j, _ in exact}
    truth_removed = removed(documents, exact)
    rows = [{"documents": len(vectors), "search": "exact", "seconds": round(exact_s, 2), "pairs": len(exact),
             "removed": len(truth_removed)}]  # fmt: skip
    whole: dict[tuple[str, int], list] = {}
    for codec, p, parts in ((c, p, k) for c in codecs for p in probes for k in shards):
        started = time.perf_counter()
        found = similar_pairs(vectors, threshold, "ivf", probes=p, codec=codec, shards=parts)
        seconds = time.perf_counter() - started
        whole.setdefault((codec, p), found)
        keys = {(i, j) for i, j, _ in found}
        gone = removed(documents, found)
        rows.append(
            {
                "documents": len(vectors),
                "search": "ivf",
                "codec": codec,
                "index_bytes": index_bytes(vectors, codec),
                "shards": parts,
                "largest_part_bytes": index_bytes(vectors, codec, parts),
                "same_pairs_as_whole_index": found == whole[(codec, p)],
                "lists": ivf_lists(len(vectors)),
                "probes": p,
                "seconds": round(seconds, 2),
                "speedup": round(exact_s / seconds, 1),
                "pairs": len(found),
                "pair_recall": round(len(keys & truth) / max(1, len(truth)), 4),
                "not_in_exact": len(keys - truth),
                "removed": len(gone),
                "removed_also_by_exact": len(gone & truth_removed),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps(rows[0]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 83_065])
    parser.add_argument("--probes", type=int, nargs="+", default=[8, DEFAULT_PROBES, 32])
    parser.add_argument("--codecs", nargs="+", default=["flat"], choices=["flat", "sq8"])
    parser.add_argument("--shards", type=int, nargs="+", default=[1], help="the index cut into parts by cells")
    parser.add_argument("--backend", default="static", choices=["static", "torch"])
    parser.add_argument("--threshold", type=float, help="cosine (default: the backend's, DedupConfig)")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()

    records = python_docstrings()
    documents = [Document(id=r["id"], text=r["text"]) for r in records[: max(args.sizes)]]
    started = time.perf_counter()
    threshold = args.threshold or DedupConfig().cosine_threshold_of(args.backend)
    vectors = embed([d.text for d in documents], backend=args.backend, max_seq_length=DedupConfig().max_seq_length)
    print(json.dumps({"embedded": len(documents), "seconds": round(time.perf_counter() - started, 1)}), flush=True)
    rows = []
    for size in args.sizes:
        # centered on the documents searched, as the stage centers its own
        rows += measure(
            comparable(vectors[:size], args.backend), documents[:size], threshold, args.probes, args.codecs, args.shards
        )
    if args.json:
        meta = {"corpus": "python docstrings (real text)", "backend": args.backend, "threshold": threshold,
                "cpus": os.cpu_count(), "omp_threads": os.environ.get("OMP_NUM_THREADS")}  # fmt: skip
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
