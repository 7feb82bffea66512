"""Stage 2, load-and-deduplicate-data: documents in, normalized and quarantined (ingest/), then deduplicated
(dedup/)."""

from __future__ import annotations

from typing import Any

from llm_pipeline.dedup import deduplicate
from llm_pipeline.ingest import load_documents, require_documents
from llm_pipeline.io import write_json, write_jsonl
from llm_pipeline.stages.contract import StageContext

EXAMPLE_CLUSTERS = 5  # clusters shown, with their texts, in report.md


def load_and_deduplicate_data(ctx: StageContext) -> dict[str, Any]:
    """Reads: the files at `data.path`. Writes: `documents` (kept documents), `rejects` (quarantined records and
    why), `clusters` (duplicate clusters), `examples` (a few clusters with their texts, for the report).
    Config: `data`, `dedup`. Counts: records, documents, quarantined by reason, files read/skipped/failed, and
    `sources.files`, the per-file summary (the report's "Inputs" table)."""
    ingested = load_documents(ctx.config.data)
    write_jsonl(ctx.output("rejects"), ingested.rejects)  # kept even when the run fails for want of documents
    require_documents(ingested, ctx.config.data)
    deduped = deduplicate(ingested.documents, ctx.config.dedup)
    write_jsonl(ctx.output("documents"), deduped.kept)
    write_jsonl(ctx.output("clusters"), deduped.clusters)
    # The report shows a few clusters with their texts; removed members exist nowhere else after this stage.
    texts = {d.id: d.text for d in ingested.documents}
    examples = [
        {**c.model_dump(), "texts": {m: texts.get(m, "")[:300] for m in c.members[:3]}}
        for c in deduped.clusters[:EXAMPLE_CLUSTERS]
    ]
    write_json(ctx.output("examples"), examples)
    return {
        **ingested.counts(),
        "sources.files": ingested.file_summary(),
        **{f"dedup.{k}": v for k, v in deduped.counts(len(ingested.documents)).items()},
    }
