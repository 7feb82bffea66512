"""Stage 2, load-and-deduplicate-data: documents in, normalized and quarantined (ingest/), then deduplicated
(dedup/)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llm_pipeline.config import DedupConfig
from llm_pipeline.dedup import deduplicate
from llm_pipeline.dedup.minhash import jaccard, shingles
from llm_pipeline.ingest import load_documents, require_documents
from llm_pipeline.io import write_json, write_jsonl
from llm_pipeline.records import Document, DuplicateCluster
from llm_pipeline.stages.contract import StageContext
from llm_pipeline.text import shared_words, word_set

if TYPE_CHECKING:
    from llm_pipeline.dedup.judge import SemanticJudge

EXAMPLE_CLUSTERS = 5  # clusters shown, with their texts, in report.md
EXAMPLE_CHARS = 300


def cluster_examples(
    documents: list[Document],
    clusters: list[DuplicateCluster],
    config: DedupConfig,
    judgements: dict[str, dict[str, Any]] | None = None,
    semantic: dict[str, Any] | None = None,
) -> dict:
    """A few clusters with their texts, and every semantic removal with its pair and both similarities (the
    cosine that removed it and the lexical Jaccard of MinHash's shingles; with them the share of their distinct
    words the two have in common, what the words rule reads), so a reviewer can judge each one;
    with `semantic_action: judge`, the judge's verdict and reason too (`judgements`, by removed id); `semantic`:
    how the semantic pass ran (DedupResult.semantic: backend, threshold, documents compared).
    Removed documents exist nowhere else after this stage."""
    texts = {d.id: d.text for d in documents}
    judgements = judgements or {}
    removing = config.semantic_action == "remove"  # review: only listed; judge: removed where confirmed

    def removed(member: str) -> bool:
        return removing or judgements.get(member, {}).get("verdict") == "duplicate"

    shown = [c for c in clusters if c.method != "semantic" or all(map(removed, c.to_kept))][:EXAMPLE_CLUSTERS]
    examples = [
        {**c.model_dump(), "texts": {m: texts.get(m, "")[:EXAMPLE_CHARS] for m in c.members[:3]}} for c in shown
    ]
    removals = []
    for cluster in (c for c in clusters if c.method == "semantic"):
        kept = shingles(texts.get(cluster.kept, ""), config.shingle_size)
        kept_words = word_set(texts.get(cluster.kept, ""))
        for member, cosine in cluster.to_kept.items():
            judged = judgements.get(member)
            removals.append(
                {
                    "removed": member,
                    "kept": cluster.kept,
                    "cosine": cosine,
                    "jaccard": round(jaccard(kept, shingles(texts.get(member, ""), config.shingle_size)), 4),
                    "shared_words": round(shared_words(kept_words, word_set(texts.get(member, ""))), 4),
                    "removed_from_output": removed(member),
                    **({"judge": {"verdict": judged["verdict"], "reason": judged["reason"]}} if judged else {}),
                    "texts": {
                        cluster.kept: texts.get(cluster.kept, "")[:EXAMPLE_CHARS],
                        member: texts.get(member, "")[:EXAMPLE_CHARS],
                    },  # fmt: skip
                }
            )
    return {"clusters": examples, "semantic_removals": removals, **({"semantic": semantic} if semantic else {})}


def load_and_deduplicate_data(ctx: StageContext) -> dict[str, Any]:
    """Reads: the files at `data.path`. Writes: `documents` (kept documents), `rejects` (quarantined records and
    why), `clusters` (duplicate clusters), `examples` (a few clusters with their texts, and every semantic
    removal with its pair and both similarities, for the report).
    Config: `data`, `dedup`, `execution` (where the work runs: `ray` spreads it over a Ray cluster, the same
    outputs). Counts: records, documents, quarantined by reason, files read/skipped/failed, and
    `sources.files`, the per-file summary (the report's "Inputs" table)."""
    if ctx.config.execution.engine == "ray":
        from llm_pipeline.engine.ray_dedup import load_and_deduplicate

        outputs = {name: ctx.output(name) for name in ("documents", "rejects", "clusters", "examples")}
        ingested, deduped, kept = load_and_deduplicate(ctx.config, outputs, _judge(ctx))
        total = ingested.document_count
    else:
        ingested = load_documents(ctx.config.data)
        write_jsonl(ctx.output("rejects"), ingested.rejects)  # kept even when the run fails for want of documents
        require_documents(ingested, ctx.config.data)
        deduped = deduplicate(ingested.documents, ctx.config.dedup, _judge(ctx))
        write_jsonl(ctx.output("documents"), deduped.kept)
        write_jsonl(ctx.output("clusters"), deduped.clusters)
        everything = deduped.clusters + deduped.review
        examples = cluster_examples(
            ingested.documents, everything, ctx.config.dedup, deduped.judgements, deduped.semantic
        )
        write_json(ctx.output("examples"), examples)
        kept, total = len(deduped.kept), len(ingested.documents)
    return {
        **ingested.counts(),
        "sources.files": ingested.file_summary(),
        **{f"dedup.{k}": v for k, v in deduped.counts(total, kept).items()},
    }


def _judge(ctx: StageContext) -> SemanticJudge | None:
    """`semantic_action: judge`'s journal (default `<output_path>/.dedup-judge-cache`), billed to this run."""
    dedup = ctx.config.dedup
    if dedup.semantic_action != "judge":
        return None
    from llm_pipeline.dedup.judge import SemanticJudge

    cache = dedup.judge.checkpoint_dir or ctx.config.output_path / ".dedup-judge-cache"
    return SemanticJudge(dedup.judge, cache, ctx.run_id, ctx.config.qa.prices)
