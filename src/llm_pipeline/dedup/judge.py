"""Semantic duplicates confirmed by an LLM judge (`dedup.semantic_action: judge`).

Cosine similarity cannot tell a reworded copy from a sibling that differs in the one word that carries its fact
(`nsmallest` and `nlargest`; docs/benchmarks.md measures why no threshold can). A judge reads both texts and says
whether the second teaches anything the first does not. Each semantic removal (a document and the kept document it
was found to copy) is asked, highest cosine first, up to `dedup.judge.max_pairs`; a document is removed only when
the judge says "duplicate". The others stay and are listed for review with the judge's verdict and reason: a
"distinct" verdict, a reply still unusable after `max_format_retries` re-asks ("failed"), a request that kept
failing or was refused by the spending cap, or a pair past `max_pairs` ("not judged"). So an unavailable or
unreliable judge can only keep documents, never remove one.

The requests go through the evaluation judge's path (evaluation/judge.py: QA's backends, limits, retry table,
ledger and journal): a verdict is journaled by the two texts, the prompt version and the judge, so a rerun asks
only what is new and a stage retry pays nothing twice; the ledger gives what this run sent and cost.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_pipeline.config import DedupJudgeConfig, ModelPrice
from llm_pipeline.evaluation.judge import Ask, ask_all, load_prompts
from llm_pipeline.io import text_hash
from llm_pipeline.logging import get_logger
from llm_pipeline.qa.backends import Job
from llm_pipeline.qa.checkpoint import request_key
from llm_pipeline.qa.chunking import Chunk
from llm_pipeline.records import Document, DuplicateCluster

log = get_logger("dedup")

PROMPT_VERSION = "dedup-judge-v1"
PROMPT_DIR = Path(__file__).parent / "judge_prompts" / PROMPT_VERSION
TEMPLATES = ("system", "user", "repair")
VERDICTS = ("duplicate", "distinct", "failed", "not judged")


@dataclass
class Judged:
    """The semantic clusters split by the judge's verdicts."""

    confirmed: list[DuplicateCluster] = field(default_factory=list)  # members the judge called duplicates
    kept: list[DuplicateCluster] = field(default_factory=list)  # the other pairs: listed for review, all kept
    verdicts: dict[str, dict[str, Any]] = field(default_factory=dict)  # removed id -> kept, verdict, reason
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class SemanticJudge:
    config: DedupJudgeConfig
    cache_dir: Path  # the verdicts' journal and the ledger
    run_id: str
    prices: dict[str, ModelPrice] = field(default_factory=dict)  # qa.prices, where the judge's own has none

    @classmethod
    def of(cls, config: DedupJudgeConfig) -> SemanticJudge:
        """For a caller without a run: the journal in `checkpoint_dir` (else ./.dedup-judge-cache)."""
        return cls(config, config.checkpoint_dir or Path(".dedup-judge-cache"), f"dedup-{uuid.uuid4().hex[:12]}")

    def judge(self, clusters: list[DuplicateCluster], documents: list[Document]) -> Judged:
        texts = {d.id: d.text for d in documents}
        pairs = sorted(
            ((cosine, c.kept, removed) for c in clusters for removed, cosine in c.to_kept.items()),
            key=lambda p: (-p[0], p[1], p[2]),
        )
        asked, skipped = pairs[: self.config.max_pairs], pairs[self.config.max_pairs :]
        prompts = load_prompts(self.config.prompt_dir, TEMPLATES, PROMPT_DIR, PROMPT_VERSION)
        asks = [self._ask(prompts, kept, removed, texts) for _, kept, removed in asked]
        journal, sending = ask_all(asks, self.config, prompts, self.cache_dir, self.run_id, self.prices, "dedup.judge")
        judged = Judged()
        for ask in asks:
            kept, removed = ask.candidates
            entry = journal.get(ask.job.key)
            if entry is None:
                verdict, reason = "not judged", "the request failed or the spending cap refused it"
            elif entry.status != "ok":
                verdict, reason = "failed", entry.reason or ""
            else:
                verdict = "duplicate" if entry.verdict["duplicate"] else "distinct"
                reason = entry.verdict.get("reason", "")
            judged.verdicts[removed] = {"kept": kept, "verdict": verdict, "reason": reason}
        for _, kept, removed in skipped:
            judged.verdicts[removed] = {"kept": kept, "verdict": "not judged", "reason": "past dedup.judge.max_pairs"}
        for cluster in clusters:
            confirmed = {m: s for m, s in cluster.to_kept.items() if judged.verdicts[m]["verdict"] == "duplicate"}
            others = {m: s for m, s in cluster.to_kept.items() if m not in confirmed}
            for part, into in ((confirmed, judged.confirmed), (others, judged.kept)):
                if part:
                    into.append(_cluster(cluster, part))
        counted = {v: 0 for v in VERDICTS}
        for found in judged.verdicts.values():
            counted[found["verdict"]] += 1
        judged.summary = {"pairs": len(pairs), **{k.replace(" ", "_"): n for k, n in counted.items()}, **sending}
        log.info("dedup_judged", **{k: v for k, v in judged.summary.items() if isinstance(v, int | float)})
        return judged

    def _ask(self, prompts: Any, kept: str, removed: str, texts: dict[str, str]) -> Ask:
        limit = self.config.max_chars
        first, second = texts[kept][:limit], texts[removed][:limit]
        key = request_key(
            kind="duplicate",
            texts=[text_hash(first), text_hash(second)],
            prompt=[prompts.version, prompts.digest],
            backend=self.config.backend,
            model=self.config.model,
            settings=[self.config.max_tokens],
        )
        messages = [
            {"role": "system", "content": prompts.render("system")},
            {"role": "user", "content": prompts.render("user", first=first, second=second)},
        ]
        job = Job(key=key, document=Document(id=removed, text=second), chunk=Chunk(0, 1, ""), messages=messages, n=1)
        return Ask(job, "duplicate", removed, (kept, removed))


def _cluster(cluster: DuplicateCluster, to_kept: dict[str, float]) -> DuplicateCluster:
    return DuplicateCluster(
        cluster_id=cluster.cluster_id,
        method=cluster.method,
        kept=cluster.kept,
        members=[cluster.kept, *to_kept],
        similarity=min(to_kept.values()),
        to_kept=to_kept,
    )
