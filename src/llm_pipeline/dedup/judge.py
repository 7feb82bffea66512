"""Semantic duplicates confirmed by an LLM judge (`dedup.semantic_action: judge`).

Cosine similarity cannot tell a reworded copy from a sibling that differs in the one word that carries its fact
(`nsmallest` and `nlargest`; docs/benchmarks.md measures why no threshold can). A judge reads both texts and says
whether the second teaches anything the first does not. The judge works inside the semantic keep rule
(`SemanticJudge.clusters`, called by `clusters.semantic_clusters` on both engines): every pair that would remove a
document is asked, highest cosine first, up to `dedup.judge.max_pairs`, and a document is removed only on a
"duplicate" verdict; one the judge keeps is compared with its next closest kept document, and counts as kept for
the documents after it. The documents it keeps are listed for review with the verdict and reason: "distinct", a
reply still unusable after `max_format_retries` re-asks ("failed"), a request that kept failing or was refused by
the spending cap, or a pair past `max_pairs` ("not judged"). So an unavailable or unreliable judge can only keep
documents, never remove one.

The requests go through the evaluation judge's path (evaluation/judge.py: QA's backends, limits, retry table,
ledger and journal): a verdict is journaled by the two texts, the prompt version and the judge, so a rerun asks
only what is new and a stage retry pays nothing twice; the ledger gives what this run sent and cost.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_pipeline.aio import run_sync
from llm_pipeline.config import DedupJudgeConfig, ModelPrice
from llm_pipeline.dedup.clusters import DocumentKey, KeepPolicy, clusters_by_kept
from llm_pipeline.evaluation.judge import Ask, ask_all, judge_backend, load_prompts
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
    # what the last `clusters` or `judge` call found (the workflow reads it)
    last: Judged | None = field(default=None, repr=False, compare=False)
    _local: Any = field(default=None, init=False, repr=False, compare=False)  # a local judge model, while loaded

    @classmethod
    def of(cls, config: DedupJudgeConfig) -> SemanticJudge:
        """For a caller without a run: the journal in `checkpoint_dir` (else ./.dedup-judge-cache)."""
        return cls(config, config.checkpoint_dir or Path(".dedup-judge-cache"), f"dedup-{uuid.uuid4().hex[:12]}")

    def __getstate__(self) -> dict[str, Any]:  # sent to the Ray driver: the findings and a model stay behind
        return {**self.__dict__, "last": None, "_local": None}

    @contextmanager
    def _rounds(self) -> Iterator[None]:
        """A local judge model is loaded once for all of a call's rounds (when one has something to ask), and
        freed after the last."""
        try:
            yield
        finally:
            if self._local is not None:
                local, self._local = self._local, None
                run_sync(local.aclose())

    def _open_local(self) -> Any:
        """The local judge model, loaded at the first round that asks something and kept for the others. (An
        endpoint's client belongs to one round's event loop, `run_sync` making one per call: `ask_all` opens and
        closes it each round.)"""
        if self._local is None:
            self._local = judge_backend(self.config)
        return self._local

    def clusters(
        self, documents: Sequence[Document | DocumentKey], pairs: list[tuple[int, int, float]], keep: KeepPolicy
    ) -> list[DuplicateCluster]:
        """The semantic keep rule (`clusters_by_kept`) with every pair that removes a document confirmed by the
        judge: the same clusters as asking the judge inside the rule, document by document, but asked in rounds
        (each round's requests concurrently). A pair not yet asked counts as a duplicate; the pairs that removed a
        document on that assumption are asked, highest cosine first, and the rule runs again, until every removal
        rests on a "duplicate" verdict. A document the judge keeps is then compared with its next closest kept
        document, and offered as a kept one to the documents after it. Past `max_pairs`, a pair is "not judged"
        (not a duplicate), and so is every pair not asked by then (one last pass of the rule, no more rounds)."""
        with self._rounds():
            return self._clusters(documents, pairs, keep)

    def _clusters(
        self, documents: Sequence[Document | DocumentKey], pairs: list[tuple[int, int, float]], keep: KeepPolicy
    ) -> list[DuplicateCluster]:
        cosine = {(min(i, j), max(i, j)): s for i, j, s in pairs}
        known: dict[tuple[int, int], tuple[str, str]] = {}  # (kept, other) -> verdict, reason
        index = {d.id: i for i, d in enumerate(documents)}
        left, asked, rounds, sending = self.config.max_pairs, 0, 0, {}

        def confirm(node: int, kept: int) -> float | None:
            found = known.get((kept, node))
            if (found is None and left > 0) or (found is not None and found[0] == "duplicate"):
                return cosine[(min(node, kept), max(node, kept))]
            return None

        prompts = self._prompts()
        while True:
            clusters = clusters_by_kept(documents, pairs, "semantic", keep, confirm)
            wanted = sorted(
                (-similarity, index[c.kept], index[member])
                for c in clusters
                for member, similarity in c.to_kept.items()
                if (index[c.kept], index[member]) not in known
            )
            if not wanted:
                break
            rounds += 1
            for _, kept, other in wanted[left:]:
                known[(kept, other)] = ("not judged", "past dedup.judge.max_pairs")
            now = [(documents[k].id, documents[o].id) for _, k, o in wanted[:left]]
            left -= len(now)
            asked += len(now)
            if now:
                texts = {d.id: _text(d) for d in (documents[i] for _, k, o in wanted[: len(now)] for i in (k, o))}
                verdicts, sent = self._ask(prompts, now, texts)
                sending = _accumulated(sending, sent)
                for (kept, other), found in verdicts.items():
                    known[(index[kept], index[other])] = found
        judged = Judged(confirmed=clusters)
        removed = {m: c.kept for c in clusters for m in c.to_kept}
        # a document the judge kept -> the closest document it was asked about, one still kept first
        closest: dict[int, tuple[bool, float, int]] = {}
        for kept, other in known:
            if documents[other].id not in removed:
                similarity = cosine[(min(kept, other), max(kept, other))]
                candidate = (documents[kept].id not in removed, similarity, kept)
                closest[other] = max(closest.get(other, candidate), candidate)
        for member, kept in removed.items():
            reason = known[(index[kept], index[member])][1]
            judged.verdicts[member] = {"kept": kept, "verdict": "duplicate", "reason": reason}
        listed: dict[int, dict[str, float]] = {}
        for other, (_, similarity, kept) in sorted(closest.items()):
            verdict, reason = known[(kept, other)]
            judged.verdicts[documents[other].id] = {"kept": documents[kept].id, "verdict": verdict, "reason": reason}
            listed.setdefault(kept, {})[documents[other].id] = similarity
        judged.kept = [
            DuplicateCluster(
                cluster_id=f"semantic-review-{documents[k].id}",
                method="semantic",
                kept=documents[k].id,
                members=[documents[k].id, *to_kept],
                similarity=round(min(to_kept.values()), 4),
                to_kept={m: round(s, 4) for m, s in to_kept.items()},
            )
            for k, to_kept in sorted(listed.items())
        ]
        judged.summary = self._summary(len(pairs), judged.verdicts, sending, asked=asked, rounds=rounds)
        self.last = judged
        return clusters

    def judge(self, clusters: list[DuplicateCluster], documents: list[Document]) -> Judged:
        """For a semantic method that does not run the keep rule through `semantic_clusters` (a plug-in's): its
        clusters' pairs asked once, highest cosine first; a member goes only on a "duplicate" verdict."""
        with self._rounds():
            return self._judge(clusters, documents)

    def _judge(self, clusters: list[DuplicateCluster], documents: list[Document]) -> Judged:
        texts = {d.id: _text(d) for d in documents}
        pairs = sorted(
            ((cosine, c.kept, removed) for c in clusters for removed, cosine in c.to_kept.items()),
            key=lambda p: (-p[0], p[1], p[2]),
        )
        asked, skipped = pairs[: self.config.max_pairs], pairs[self.config.max_pairs :]
        verdicts, sending = self._ask(self._prompts(), [(k, r) for _, k, r in asked], texts) if asked else ({}, {})
        judged = Judged()
        for _, kept, removed in asked:
            verdict, reason = verdicts[(kept, removed)]
            judged.verdicts[removed] = {"kept": kept, "verdict": verdict, "reason": reason}
        for _, kept, removed in skipped:
            judged.verdicts[removed] = {"kept": kept, "verdict": "not judged", "reason": "past dedup.judge.max_pairs"}
        for cluster in clusters:
            confirmed = {m: s for m, s in cluster.to_kept.items() if judged.verdicts[m]["verdict"] == "duplicate"}
            others = {m: s for m, s in cluster.to_kept.items() if m not in confirmed}
            for part, into in ((confirmed, judged.confirmed), (others, judged.kept)):
                if part:
                    into.append(_cluster(cluster, part))
        judged.summary = self._summary(len(pairs), judged.verdicts, sending, asked=len(asked), rounds=int(bool(asked)))
        self.last = judged
        return judged

    def _prompts(self) -> Any:
        return load_prompts(self.config.prompt_dir, TEMPLATES, PROMPT_DIR, PROMPT_VERSION)

    def _ask(
        self, prompts: Any, pairs: list[tuple[str, str]], texts: dict[str, str]
    ) -> tuple[dict[tuple[str, str], tuple[str, str]], dict[str, Any]]:
        """(kept id, other id) -> (verdict, reason) for each pair, and what the sending cost."""
        asks = [self._one(prompts, kept, other, texts) for kept, other in pairs]
        journal, sending = ask_all(
            asks,
            self.config,
            prompts,
            self.cache_dir,
            self.run_id,
            self.prices,
            "dedup.judge",
            self._open_local if self.config.backend == "local" else None,
        )
        verdicts = {}
        for ask in asks:
            entry = journal.get(ask.job.key)
            if entry is None:
                found = ("not judged", "the request failed or the spending cap refused it")
            elif entry.status != "ok":
                found = ("failed", entry.reason or "")
            else:
                found = ("duplicate" if entry.verdict["duplicate"] else "distinct", entry.verdict.get("reason", ""))
            verdicts[(ask.candidates[0], ask.candidates[1])] = found
        return verdicts, sending

    def _one(self, prompts: Any, kept: str, other: str, texts: dict[str, str]) -> Ask:
        limit = self.config.max_chars
        first, second = texts[kept][:limit], texts[other][:limit]
        key = request_key(
            kind="duplicate",
            texts=[text_hash(first), text_hash(second)],
            prompt=[prompts.version, prompts.digest],
            backend=self.config.backend,
            model=self.config.model,
            settings=[self.config.max_tokens],
        )
        messages = pair_messages(prompts, first, second)
        job = Job(key=key, document=Document(id=other, text=second), chunk=Chunk(0, 1, ""), messages=messages, n=1)
        return Ask(job, "duplicate", other, (kept, other))

    def _summary(
        self, pairs: int, verdicts: dict[str, dict[str, Any]], sending: dict[str, Any], **extra: int
    ) -> dict[str, Any]:
        counted = {v: 0 for v in VERDICTS}
        for found in verdicts.values():
            counted[found["verdict"]] += 1
        summary = {"pairs": pairs, **extra, **{k.replace(" ", "_"): n for k, n in counted.items()}, **sending}
        log.info("dedup_judged", **{k: v for k, v in summary.items() if isinstance(v, int | float)})
        return summary


def pair_messages(prompts: Any, first: str, second: str) -> list[dict[str, str]]:
    """The chat the judge is asked about one pair (the kept document first), from the prompt templates."""
    return [
        {"role": "system", "content": prompts.render("system")},
        {"role": "user", "content": prompts.render("user", first=first, second=second)},
    ]


def _text(document: Document | DocumentKey) -> str:
    text = getattr(document, "text", None)
    if text is None:
        raise TypeError("the dedup judge reads the documents' texts: the keep rule was given keys only")
    return text


def _accumulated(before: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """A later round's sending figures: the ledger's totals for the run as they are now, the per-call counts
    (requests still failing, refused by the cap) summed over the rounds."""
    return {**now, **{k: before.get(k, 0) + now[k] for k in ("still_failing", "refused_by_cap")}}


def _cluster(cluster: DuplicateCluster, to_kept: dict[str, float]) -> DuplicateCluster:
    return DuplicateCluster(
        cluster_id=cluster.cluster_id,
        method=cluster.method,
        kept=cluster.kept,
        members=[cluster.kept, *to_kept],
        similarity=min(to_kept.values()),
        to_kept=to_kept,
    )
