"""Dedup quality and speed on a synthetic corpus with planted duplicates (benchmarks/synthetic_corpus.py).

    .venv/bin/python benchmarks/dedup_benchmark.py                      # 10k and 100k documents, every method
    .venv/bin/python benchmarks/dedup_benchmark.py --docs 10000 --methods minhash naive

Prints, per corpus size and method: seconds, documents/s, peak RSS of the process that ran it (each method runs
in a fresh subprocess), precision / recall / F1 over duplicate pairs, recall per planted kind (exact, 1/3/5/10 %
edits, paraphrase), and how many documents without any duplicate were removed (must be 0).
`naive` is the baseline the MinHash path is measured against, in the same run: a per-document datasketch loop
(MinHash.update per shingle, MinHashLSH insert and query, estimated-Jaccard verification), same shingles,
permutations, bands and threshold. Torch and ONNX Runtime get 2 threads (set OMP_NUM_THREADS to change).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from synthetic_corpus import KINDS, write_corpus  # noqa: E402

METHODS = ("exact", "minhash", "naive", "semantic", "hybrid")


def run_method(
    method: str, corpus: Path, clusters_out: Path, backend: str, overrides: dict | None = None
) -> dict[str, float]:
    """In a subprocess: load, deduplicate, write clusters; returns timing and peak memory. `overrides`: other
    DedupConfig fields (`--dedup KEY=VALUE`)."""
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    from llm_pipeline.config import DataConfig, DedupConfig
    from llm_pipeline.dedup import deduplicate
    from llm_pipeline.ingest import load_documents
    from llm_pipeline.io import write_jsonl

    documents = load_documents(DataConfig(path=corpus)).documents
    config = DedupConfig(
        method="minhash" if method == "naive" else method, embedding_backend=backend, **(overrides or {})
    )
    if method in ("semantic", "hybrid"):  # model loading (and a one-time distillation or export) is not timed
        from llm_pipeline.models.embeddings import load_embedder

        load_embedder(config.embedding_model, config.device, backend, config.max_seq_length).encode(["warm"], 1)
    started = time.perf_counter()
    clusters = naive_minhash(documents, config) if method == "naive" else deduplicate(documents, config).clusters
    seconds = time.perf_counter() - started
    write_jsonl(clusters_out, clusters)
    return {"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def naive_minhash(documents, config):  # type: ignore[no-untyped-def]
    from datasketch import MinHash, MinHashLSH

    from llm_pipeline.dedup.clusters import clusters_by_kept
    from llm_pipeline.dedup.minhash import lsh_params
    from llm_pipeline.text import dedup_tokens

    threshold, size = config.jaccard_threshold, config.shingle_size
    bands, rows = lsh_params(threshold, config.num_perm)
    lsh = MinHashLSH(threshold=threshold, num_perm=config.num_perm, params=(bands, rows))
    signatures, pairs = [], []
    for index, document in enumerate(documents):
        words = dedup_tokens(document.text)
        signature = MinHash(num_perm=config.num_perm)
        for i in range(max(1, len(words) - size + 1)):
            signature.update(" ".join(words[i : i + size]).encode())
        for other in lsh.query(signature):
            similarity = signature.jaccard(signatures[other])
            if similarity >= threshold:
                pairs.append((other, index, similarity))
        lsh.insert(index, signature)
        signatures.append(signature)
    return clusters_by_kept(documents, pairs, "minhash", config.keep)


def score(corpus: Path, clusters_path: Path, skip_kinds: tuple[str, ...] = ()) -> dict[str, object]:
    """Pair-level precision/recall/F1 against the planted truth; clusters of all passes are merged first.
    Copies of a kind in `skip_kinds` are left out of truth and predictions alike."""
    truth: dict[str, str] = {}
    kind_of: dict[str, str] = {}
    skipped: set[str] = set()
    for line in corpus.open():
        record = json.loads(line)
        if record["metadata"].get("kind") in skip_kinds:
            skipped.add(record["id"])
            continue
        source = record["metadata"].get("truth")
        truth[record["id"]] = source or record["id"]
        if source:
            kind_of[record["id"]] = record["metadata"]["kind"]
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    removed = set()
    for line in clusters_path.open():
        cluster = json.loads(line)
        members = [m for m in cluster["members"] if m not in skipped]
        if not members:
            continue
        removed |= {m for m in members if m != cluster["kept"]}
        for member in members[1:]:
            parent[find(member)] = find(members[0])
    predicted_groups: dict[str, list[str]] = defaultdict(list)
    for node in list(parent):
        predicted_groups[find(node)].append(node)
    true_groups: dict[str, list[str]] = defaultdict(list)
    for doc, group in truth.items():
        true_groups[group].append(doc)
    true_pairs = sum(len(g) * (len(g) - 1) // 2 for g in true_groups.values())
    predicted_pairs = correct = 0
    for group in predicted_groups.values():
        predicted_pairs += len(group) * (len(group) - 1) // 2
        per_truth: dict[str, int] = defaultdict(int)
        for doc in group:
            per_truth[truth[doc]] += 1
        correct += sum(n * (n - 1) // 2 for n in per_truth.values())
    precision = correct / predicted_pairs if predicted_pairs else 1.0
    recall = correct / true_pairs if true_pairs else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    by_kind = {}
    for kind in KINDS:
        copies = [c for c, k in kind_of.items() if k == kind]
        found = sum(1 for c in copies if c in parent and find(c) == find(truth[c]) and truth[c] in parent)
        by_kind[kind] = found / len(copies) if copies else float("nan")
    singletons = {doc for doc, group in truth.items() if len(true_groups[group]) == 1}
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "recall_by_kind": by_kind,
        "unique_removed": len(removed & singletons),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_run":  # the subprocess side
        _, _, method, corpus, out, backend, overrides = sys.argv
        print(json.dumps(run_method(method, Path(corpus), Path(out), backend, json.loads(overrides))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument(
        "--semantic-max-docs",
        type=int,
        default=20_000,
        help="skip semantic and hybrid above this size (embedding 100k documents takes long)",
    )
    parser.add_argument("--backend", default="onnx-int8", choices=["torch", "onnx", "onnx-int8", "static"])
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--dedup",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="other dedup settings for every method, e.g. semantic_numbers_must_agree=false (YAML values)",
    )
    args = parser.parse_args()
    overrides = {k: yaml.safe_load(v) for k, _, v in (item.partition("=") for item in args.dedup)}
    results = []
    print(
        "| docs | method | embeddings | seconds | docs/s | peak RSS MB | precision | recall | F1 | F1 (exact + edits "
        "up to 10 %) | recall by kind | unique docs removed |"
    )
    print("|---" * 12 + "|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.docs:
            corpus = write_corpus(Path(tmp) / f"corpus-{n}.jsonl", n)
            for method in args.methods:
                if method in ("semantic", "hybrid") and n > args.semantic_max_docs:
                    continue
                out = Path(tmp) / f"clusters-{n}-{method}.jsonl"
                done = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "_run",
                        method,
                        str(corpus),
                        str(out),
                        args.backend,
                        json.dumps(overrides),
                    ],  # fmt: skip
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if done.returncode != 0:
                    print(f"{method} on {n} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
                    continue
                timing = json.loads(done.stdout.strip().splitlines()[-1])
                row = {
                    "docs": n,
                    "method": method,
                    "backend": args.backend if method in ("semantic", "hybrid") else "-",
                    **({"dedup": overrides} if overrides else {}),
                    **timing,
                    "docs_per_s": n / timing["seconds"],
                    **score(corpus, out),
                }
                row["f1_up_to_10pct"] = score(corpus, out, skip_kinds=("paraphrase",))["f1"]
                results.append(row)
                print(format_row(row), flush=True)
    naive = {r["docs"]: r["seconds"] for r in results if r["method"] == "naive"}
    for r in results:
        if r["method"] == "minhash" and r["docs"] in naive:
            print(
                f"minhash speed-up over the naive datasketch loop at {r['docs']} docs: "
                f"{naive[r['docs']] / r['seconds']:.1f}x"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def format_row(row: dict) -> str:
    kinds = " ".join(f"{k}={v:.2f}" for k, v in row["recall_by_kind"].items())
    return (
        f"| {row['docs']} | {row['method']} | {row['backend']} | {row['seconds']:.1f} | {row['docs_per_s']:.0f} | "
        f"{row['peak_rss_mb']:.0f} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} | "
        f"{row['f1_up_to_10pct']:.4f} | {kinds} | {row['unique_removed']} |"
    )


if __name__ == "__main__":
    main()
