"""Dedup on real text no one here wrote (benchmarks/real_text_corpus.py), scored against exact all-pairs truth.

    make bench-dedup-real          # or: .venv/bin/python benchmarks/dedup_real_benchmark.py --source docstrings

Each method runs in a fresh subprocess over the corpus (loading not timed; model loading not timed). Per method:
seconds, documents/s, documents removed and, against the truth (exact word 5-gram Jaccard, whitespace words):
- `no_partner`: documents removed that have no near-duplicate >= 0.5 anywhere in the corpus (target 0);
- `kept_partner`: share of removals whose kept document (the one it was removed as a copy of) is such a
  partner (target >= 0.98);
- `precision_t`: share of removals whose kept document reaches the method's own threshold in the truth measure;
- `pair_recall_t`: share of truth pairs >= t (the MinHash threshold) of which not both documents are kept
  (target >= 0.95);
- `ideal_t`: what the kept-document rule removes on the truth graph at t (first kept), for scale.
`naive` is the per-shingle datasketch loop (MinHash.update per shingle, MinHashLSH insert and query, estimated
Jaccard), same tokens, shingles, permutations, bands and threshold: the speed baseline, in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from dedup_benchmark import naive_minhash  # noqa: E402  (the baseline, shared with the synthetic benchmark)
from real_text_corpus import SOURCES, TRUTH_FLOOR, truth_pairs, write_corpus  # noqa: E402

# name -> DedupConfig fields; `naive` is the datasketch loop with the minhash defaults
VARIANTS: dict[str, dict] = {
    "exact": {"method": "exact"},
    "minhash": {"method": "minhash"},
    "minhash-estimated": {"method": "minhash", "verify": "estimated"},
    "minhash-3": {"method": "minhash", "shingle_size": 3},
    "minhash-t0.5": {"method": "minhash", "minhash_threshold": 0.5},
    "minhash-t0.6": {"method": "minhash", "minhash_threshold": 0.6},
    "minhash-t0.65": {"method": "minhash", "minhash_threshold": 0.65},
    "minhash-t0.7": {"method": "minhash", "minhash_threshold": 0.7},
    "naive": {"method": "minhash"},
    "semantic": {"method": "semantic"},
    "semantic-static": {"method": "semantic", "embedding_backend": "static"},
    "hybrid": {"method": "hybrid"},  # the defaults: embedding_backend auto
    "hybrid-torch": {"method": "hybrid", "embedding_backend": "torch"},
    "hybrid-static": {"method": "hybrid", "embedding_backend": "static"},
    # the default hybrid without the numbers rule (semantic pairs removed even where their numbers conflict)
    "hybrid-any-numbers": {"method": "hybrid", "semantic_numbers_must_agree": False},
    # the default hybrid without the words rule (semantic pairs removed however few words their texts share)
    "hybrid-any-words": {"method": "hybrid", "semantic_min_shared_words": None},
}


DEFAULT_VARIANTS = [
    "exact", "minhash", "minhash-estimated", "minhash-3", "minhash-t0.7", "naive", "semantic-static", "hybrid-static"
]  # fmt: skip


def run_variant(name: str, corpus: Path, out: Path) -> dict:
    """The subprocess side: load (not timed), deduplicate, write the clusters."""
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    from llm_pipeline.config import DataConfig, DedupConfig
    from llm_pipeline.dedup import deduplicate
    from llm_pipeline.ingest import load_documents
    from llm_pipeline.io import write_jsonl

    documents = load_documents(DataConfig(path=corpus, max_chars=200_000)).documents
    config = DedupConfig(**VARIANTS[name])
    if config.method in ("semantic", "hybrid"):
        from llm_pipeline.models.embeddings import load_embedder

        backend = config.backend_for(config.windows_of(len(d.text) for d in documents))  # auto: what it takes here
        load_embedder(config.embedding_model, config.device, backend, config.max_seq_length).encode(["warm"], 1)
    started = time.perf_counter()
    clusters = naive_minhash(documents, config) if name == "naive" else deduplicate(documents, config).clusters
    seconds = time.perf_counter() - started
    write_jsonl(out, clusters)
    return {
        "seconds": round(seconds, 2),
        "documents": len(documents),
        "threshold": config.jaccard_threshold,
    }  # no peak RSS: a child started by this (large) process inherits its high-water mark, so it would mislead


def removals(clusters_path: Path) -> list[tuple[str, str, str, float | None]]:
    """(removed, kept, method, similarity to kept) for every removal."""
    found = []
    for line in clusters_path.open():
        cluster = json.loads(line)
        for member in cluster["members"]:
            if member != cluster["kept"]:
                found.append((member, cluster["kept"], cluster["method"], cluster.get("to_kept", {}).get(member)))
    return found


def ideal(n: int, truth: dict[tuple[int, int], float], threshold: float) -> int:
    """Documents the kept-document rule removes on the truth graph at `threshold` (first seen kept)."""
    neighbours: dict[int, list[int]] = {}
    for (i, j), s in truth.items():
        if s >= threshold:
            neighbours.setdefault(j, []).append(i)
    kept: set[int] = set()
    removed = 0
    for node in range(n):
        if any(k in kept for k in neighbours.get(node, [])):
            removed += 1
        else:
            kept.add(node)
    return removed


def score(ids: list[str], truth: dict[tuple[int, int], float], found: list, threshold: float) -> dict:
    index = {doc_id: i for i, doc_id in enumerate(ids)}
    partnered = {i for pair in truth for i in pair}
    removed = {index[r] for r, *_ in found}

    def truth_of(a: int, b: int) -> float:
        return truth.get((min(a, b), max(a, b)), 0.0)

    at_t = [(i, j) for (i, j), s in truth.items() if s >= threshold]
    return {
        "removed": len(removed),
        "no_partner": sum(1 for i in removed if i not in partnered),
        "kept_partner": round(
            sum(1 for r, k, *_ in found if truth_of(index[r], index[k]) >= TRUTH_FLOOR) / max(1, len(found)), 4
        ),  # fmt: skip
        "precision_t": round(
            sum(1 for r, k, *_ in found if truth_of(index[r], index[k]) >= threshold) / max(1, len(found)), 4
        ),  # fmt: skip
        "pair_recall_t": round(sum(1 for i, j in at_t if i in removed or j in removed) / max(1, len(at_t)), 4),
        "ideal_t": ideal(len(ids), truth, threshold),
    }


ANATOMY_COSINES = (0.85, 0.9, 0.95, 0.97, 0.99)


def diff_kind(kept: str, removed: str) -> str:
    """What separates two texts, by the word diff of their dedup tokens (difflib, first 3,000 characters):
    `contained` (no word replaced: one text is the other with words added or dropped), `template` (words replaced,
    but at least half of the shorter text is in common runs: one template, different slot values, such as
    `nsmallest` and `nlargest`), `different` (less than half in common)."""
    import difflib

    from llm_pipeline.text import dedup_tokens

    a, b = dedup_tokens(kept[:3000]), dedup_tokens(removed[:3000])
    ops = difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()
    if not any(tag == "replace" for tag, *_ in ops):
        return "contained"
    common = sum(i2 - i1 for tag, i1, i2, _, _ in ops if tag == "equal") / max(1, min(len(a), len(b)))
    return "template" if common >= 0.5 else "different"


def anatomy(by_id: dict[str, str], semantic: list) -> dict[str, list[int]]:
    """The semantic removals counted by `diff_kind`, at each cosine of ANATOMY_COSINES."""
    counts = {kind: [0] * len(ANATOMY_COSINES) for kind in ("contained", "template", "different")}
    for removed, kept, _, cosine in semantic:
        kind = diff_kind(by_id[kept], by_id[removed])
        for k, floor in enumerate(ANATOMY_COSINES):
            counts[kind][k] += (cosine or 0.0) >= floor
    return counts


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_run":
        print(json.dumps(run_variant(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="docstrings", choices=sorted(SOURCES))
    parser.add_argument("--limit", type=int, default=None, help="the first N documents only")
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS),
                        help="the contextual (torch) semantic variants take 10+ minutes on 2 cores")  # fmt: skip
    parser.add_argument("--sample", type=int, default=0, help="print N random semantic removals with both texts")
    parser.add_argument("--sample-kind", choices=["contained", "template", "different"],
                        help="draw the --sample from semantic removals of this diff_kind only")  # fmt: skip
    parser.add_argument("--sample-out", type=Path,
                        help="also write the --sample as JSON Lines (ids, cosine, both texts) for judging by hand "
                        "(benchmarks/dedup_judge_agreement.py)")  # fmt: skip
    parser.add_argument("--anatomy", action="store_true",
                        help="count the semantic removals by their word diff (`diff_kind`), by cosine")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        count = write_corpus(corpus, args.source, args.limit)
        records = [json.loads(line) for line in corpus.open()]
        ids, texts = [r["id"] for r in records], [r["text"] for r in records]
        started = time.perf_counter()
        truth = truth_pairs(texts)
        print(f"corpus: {args.source}, {count} documents; truth: {len(truth)} pairs >= {TRUTH_FLOOR} "
              f"({time.perf_counter() - started:.1f} s)", flush=True)  # fmt: skip
        print("| variant | seconds | docs/s | removed | ideal at t | no partner >= 0.5 | kept is a partner | "
              "precision at t | pair recall at t | t |")  # fmt: skip
        print("|---" * 10 + "|", flush=True)
        for name in args.variants:
            out = Path(tmp) / f"{name}.jsonl"
            done = subprocess.run([sys.executable, __file__, "_run", name, str(corpus), str(out)],
                                  capture_output=True, text=True, check=False)  # fmt: skip
            if done.returncode != 0:
                print(f"{name} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
                continue
            timing = json.loads(done.stdout.strip().splitlines()[-1])
            found = removals(out)
            row = {"variant": name, **timing, "docs_per_s": round(timing["documents"] / max(1e-9, timing["seconds"]))}
            row.update(score(ids, truth, found, timing["threshold"]))
            rows.append(row)
            print(f"| {name} | {row['seconds']} | {row['docs_per_s']} | {row['removed']} | {row['ideal_t']} | "
                  f"{row['no_partner']} | {row['kept_partner']} | {row['precision_t']} | {row['pair_recall_t']} | "
                  f"{row['threshold']} |", flush=True)  # fmt: skip
            if args.sample and name.startswith(("semantic", "hybrid")):
                by_id = dict(zip(ids, texts, strict=True))
                semantic = [f for f in found if f[2] == "semantic"]
                if args.sample_kind:
                    semantic = [f for f in semantic if diff_kind(by_id[f[1]], by_id[f[0]]) == args.sample_kind]
                drawn = random.Random(0).sample(semantic, min(args.sample, len(semantic)))
                for removed, kept, _, cosine in drawn:
                    print(f"\n--- {name}: {removed} as a copy of {kept} (cosine {cosine})\n"
                          f"  KEPT: {by_id[kept][:400]}\n  GONE: {by_id[removed][:400]}")  # fmt: skip
                if args.sample_out:
                    with args.sample_out.open("w") as sample:
                        for removed, kept, _, cosine in drawn:
                            pair = {"kept": kept, "removed": removed, "cosine": cosine, "source": args.source,
                                    "variant": name, "kind": diff_kind(by_id[kept], by_id[removed]),
                                    "kept_text": by_id[kept], "removed_text": by_id[removed]}  # fmt: skip
                            sample.write(json.dumps(pair) + "\n")
            if args.anatomy and name.startswith(("semantic", "hybrid")):
                row["anatomy"] = anatomy(dict(zip(ids, texts, strict=True)), [f for f in found if f[2] == "semantic"])
                print(f"  {name}: semantic removals by word diff, counted at cosine >= "
                      f"{' / '.join(map(str, ANATOMY_COSINES))}:")  # fmt: skip
                for kind, counts in row["anatomy"].items():
                    print(f"    {kind}: {' / '.join(map(str, counts))}")
        naive = next((r for r in rows if r["variant"] == "naive"), None)
        fast = next((r for r in rows if r["variant"] == "minhash"), None)
        if naive and fast:
            print(f"\nminhash vs the naive datasketch loop, same run: {naive['seconds'] / fast['seconds']:.1f}x")
    if args.json:
        args.json.write_text(json.dumps({"source": args.source, "documents": count, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
