"""The load-and-deduplicate stage's dedup half: identify duplicate clusters with the configured method (or the
hybrid sequence), then remove them, method by method."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llm_pipeline.config import DedupConfig
from llm_pipeline.dedup.clusters import (
    LENGTH_APART,
    PARTS_APART,
    SET_APART,
    WORDS_APART,
    DocumentKey,
    LengthRule,
    SetApart,
    WordsRule,
    text_length,
)
from llm_pipeline.dedup.methods import DEDUP_METHODS, method_sequence
from llm_pipeline.dedup.remove import remove_duplicates
from llm_pipeline.logging import get_logger
from llm_pipeline.records import Document, DuplicateCluster

if TYPE_CHECKING:
    from llm_pipeline.dedup.judge import SemanticJudge

log = get_logger("dedup")
SET_APART_EXAMPLES = 20  # the pairs set apart by their numbers that cluster_examples.json and the report name


@dataclass
class DedupResult:
    kept: list[Document]
    clusters: list[DuplicateCluster] = field(default_factory=list)
    removed_by_method: dict[str, int] = field(default_factory=dict)
    review: list[DuplicateCluster] = field(default_factory=list)  # found, not removed (`review`, or not confirmed)
    judgements: dict[str, dict[str, Any]] = field(default_factory=dict)  # `judge`: removed id -> verdict, reason
    judge_summary: dict[str, Any] = field(default_factory=dict)
    # the semantic pass as it ran: the embedding backend `auto` resolved to, its cosine threshold, how many
    # documents it compared (the report names them beside the removals)
    semantic: dict[str, Any] = field(default_factory=dict)

    def counts(self, total: int, kept: int | None = None) -> dict[str, float]:
        """`kept`: how many were kept, where `self.kept` does not hold them (the ray engine streams them)."""
        kept = len(self.kept) if kept is None else kept
        removed = total - kept
        return {
            "input": total,
            "kept": kept,
            "removed": removed,
            "clusters": len(self.clusters),
            "dedup_rate": round(removed / total, 4) if total else 0.0,
            **{f"removed.{m}": n for m, n in self.removed_by_method.items()},
            **({"review.semantic": sum(len(c.members) - 1 for c in self.review)} if self.review else {}),
            **{f"judge.{k}": v for k, v in self.judge_summary.items() if isinstance(v, int | float)},
            **({"semantic.cosine_threshold": self.semantic["cosine_threshold"]} if self.semantic else {}),
            **({"semantic.set_apart_by_numbers": n} if (n := self.semantic.get("set_apart_by_numbers")) else {}),
            **({"semantic.set_apart_by_length": n} if (n := self.semantic.get("set_apart_by_length")) else {}),
            **({"semantic.set_apart_as_parts": n} if (n := self.semantic.get("set_apart_as_parts")) else {}),
            **({"semantic.set_apart_by_words": n} if (n := self.semantic.get("set_apart_by_words")) else {}),
        }


def deduplicate(documents: list[Document], config: DedupConfig, judge: SemanticJudge | None = None) -> DedupResult:
    """`judge`: where `semantic_action: judge` keeps its verdicts and whose run it bills (default: the config's
    `judge.checkpoint_dir`, a run of its own)."""
    return run_methods(DedupResult(kept=list(documents)), method_sequence(config.method), config, judge=judge)


Identify = Callable[[Sequence[Document | DocumentKey], DedupConfig], list[DuplicateCluster]]


def run_methods(
    result: DedupResult,
    methods: tuple[str, ...],
    config: DedupConfig,
    judge: SemanticJudge | None = None,
) -> DedupResult:
    """Each method in turn on what the ones before kept (`result.kept`), recording what it removed (the Ray engine
    runs the semantic method through `semantic_step` itself, on the documents' keys)."""
    for method in methods:
        identify = DEDUP_METHODS.get(method)
        if method == "semantic":
            clusters = semantic_step(result, result.kept, identify, config, judge)
            if config.semantic_action == "review":
                continue
        else:
            clusters = identify(result.kept, config)
        before = len(result.kept)
        result.kept = remove_duplicates(result.kept, clusters)
        result.clusters.extend(clusters)
        result.removed_by_method[method] = before - len(result.kept)
        log.info(
            "dedup_method_done",
            method=method,
            clusters=len(clusters),
            removed=before - len(result.kept),
            remaining=len(result.kept),
        )
    return result


def semantic_step(
    result: DedupResult,
    documents: Sequence[Document | DocumentKey],
    identify: Identify,
    config: DedupConfig,
    judge: SemanticJudge | None = None,
) -> list[DuplicateCluster]:
    """The semantic method on `documents` (those still kept; on Ray, their keys with the texts left in the object
    store), as `semantic_action` says, recorded in `result`: the clusters to remove (with `judge`, those the judge
    confirmed, the others listed in `result.review`; with `review`, none: every cluster listed there)."""
    resolved = config.resolved_for(text_length(d) for d in documents)  # the method is given it: resolved once
    result.semantic = {
        "embedding_backend": resolved.embedding_backend,
        "embedding_model": config.embedding_model,
        "cosine_threshold": resolved.cosine_threshold,
        "documents": len(documents),
        "action": config.semantic_action,
        "max_length_ratio": config.semantic_max_length_ratio,
        "min_shared_words": config.semantic_min_shared_words,
    }
    log.info("semantic_embeddings", backend=resolved.embedding_backend, documents=len(documents))
    apart = SetApart(SET_APART_EXAMPLES) if config.semantic_numbers_must_agree else None
    ratio = config.semantic_max_length_ratio
    lengths = LengthRule(ratio, SetApart(SET_APART_EXAMPLES)) if ratio is not None else None
    parts = SetApart(SET_APART_EXAMPLES)
    share = config.semantic_min_shared_words
    words = WordsRule(share, SetApart(SET_APART_EXAMPLES)) if share is not None else None
    token = SET_APART.set(apart)
    length_token = LENGTH_APART.set(lengths)
    parts_token = PARTS_APART.set(parts)
    words_token = WORDS_APART.set(words)
    try:
        if config.semantic_action == "judge":
            return _judged(result, documents, identify, resolved, judge)
        clusters = identify(documents, resolved)
    finally:
        SET_APART.reset(token)
        LENGTH_APART.reset(length_token)
        PARTS_APART.reset(parts_token)
        WORDS_APART.reset(words_token)
        if words is not None:
            result.semantic["set_apart_by_words"] = words.apart.count
            result.semantic["set_apart_by_words_examples"] = words.apart.closest()
            if words.apart.count:
                log.info("semantic_set_apart_by_words", pairs=words.apart.count, share=share)
        if parts.count:
            result.semantic["set_apart_as_parts"] = parts.count
            result.semantic["set_apart_as_parts_examples"] = parts.closest()
            log.info("semantic_set_apart_as_parts", pairs=parts.count)
        if lengths is not None:
            result.semantic["set_apart_by_length"] = lengths.apart.count
            result.semantic["set_apart_by_length_examples"] = lengths.apart.closest()
            if lengths.apart.count:
                log.info("semantic_set_apart_by_length", pairs=lengths.apart.count, ratio=ratio)
        if apart is not None:
            result.semantic["set_apart_by_numbers"] = apart.count
            result.semantic["set_apart_examples"] = apart.closest()
            if apart.count:
                log.info("semantic_set_apart_by_numbers", pairs=apart.count)
    if config.semantic_action == "review":
        result.review.extend(clusters)  # listed with both similarities for a person to judge; all kept
        log.info("dedup_method_done", method="semantic", review=sum(len(c.members) - 1 for c in clusters),
                 removed=0, remaining=len(documents))  # fmt: skip
        return []
    return clusters


def _judged(
    result: DedupResult,
    documents: Sequence[Document | DocumentKey],
    identify: Identify,
    config: DedupConfig,
    judge: SemanticJudge | None,
) -> list[DuplicateCluster]:
    """The semantic method run with the judge confirming its keep rule's pairs (`semantic_clusters`); the clusters
    it confirmed. The pairs it did not confirm go to `result.review` with their verdicts. A method that does not
    run the rule through `semantic_clusters` (a plug-in's) has its clusters' pairs judged afterwards."""
    from llm_pipeline.dedup.clusters import PAIR_JUDGE
    from llm_pipeline.dedup.judge import SemanticJudge

    judge = judge or SemanticJudge.of(config.judge)
    judge.last = None
    token = PAIR_JUDGE.set(judge)
    try:
        clusters = identify(documents, config)
    finally:
        PAIR_JUDGE.reset(token)
    judged = judge.last or judge.judge(clusters, documents)
    result.review.extend(judged.kept)
    result.judgements.update(judged.verdicts)
    result.judge_summary = judged.summary
    return judged.confirmed
