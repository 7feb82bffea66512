"""Turn similar pairs into duplicate clusters and choose the member to keep (remove.py acts on them).

`clusters_by_kept` (near-duplicate methods): documents are taken in keep order (`dedup.keep`); one is removed only
as the duplicate of a document already kept with which it reaches the threshold, and is attributed to the most
similar such one. No chaining: when A~B and B~C but not A~C, B goes as A's copy and C stays, because the only
document C resembles was removed. `clusters_from_pairs` (connected components) is for exact copies, where
similarity is transitive, and for callers that want groups."""

from __future__ import annotations

import heapq
import re
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from llm_pipeline.records import Document, DuplicateCluster
from llm_pipeline.text import number_mask, numbers_conflict, shared_words, word_set

KeepPolicy = Literal["first", "longest", "richest_metadata"]

# `semantic_action: judge`: the judge (dedup/judge.py's SemanticJudge) that confirms the semantic keep rule's pairs,
# set by the dedup workflow around the semantic method's call; None: cosine decides alone.
PAIR_JUDGE: ContextVar[Any] = ContextVar("pair_judge", default=None)


class SetApart:
    """The semantic pairs kept apart because each text states a number the other does not
    (`dedup.semantic_numbers_must_agree`): how many, and the `closest` few (highest cosine first), in bounded memory
    however many there are."""

    def __init__(self, closest: int) -> None:
        self.count = 0
        self.size = closest
        self._heap: list[tuple[float, str, str]] = []  # the closest so far, lowest first (a min-heap)

    def add(self, a: str, b: str, cosine: float) -> None:
        self.count += 1
        item = (cosine, a, b)
        if len(self._heap) < self.size:
            heapq.heappush(self._heap, item)
        elif item > self._heap[0]:
            heapq.heapreplace(self._heap, item)

    def closest(self) -> list[dict[str, Any]]:
        ranked = sorted(self._heap, key=lambda item: (-item[0], item[1], item[2]))
        return [{"a": a, "b": b, "cosine": round(cosine, 4)} for cosine, a, b in ranked]


# set by the dedup workflow around the semantic method's call when the numbers rule is on; None: it is off
SET_APART: ContextVar[SetApart | None] = ContextVar("set_apart", default=None)


@dataclass
class LengthRule:
    """`dedup.semantic_max_length_ratio`: a semantic pair whose longer text is over `ratio` times the shorter is
    kept apart (`apart` counts them and keeps the closest)."""

    ratio: float
    apart: SetApart


# set by the dedup workflow around the semantic method's call when the length rule is on; None: it is off
LENGTH_APART: ContextVar[LengthRule | None] = ContextVar("length_apart", default=None)


@dataclass
class WordsRule:
    """`dedup.semantic_min_shared_words`: a semantic pair whose two texts have under `share` of their distinct
    content words in common (text.shared_words) is kept apart (`apart` counts them and keeps the closest)."""

    share: float
    apart: SetApart


# set by the dedup workflow around the semantic method's call when the words rule is on; None: it is off
WORDS_APART: ContextVar[WordsRule | None] = ContextVar("words_apart", default=None)


# set by the dedup workflow around the semantic method's call: the pairs of two parts of one file kept apart
PARTS_APART: ContextVar[SetApart | None] = ContextVar("parts_apart", default=None)
_PART_ID = re.compile(r"(.+)#\d+")  # a part of a long document file: its file's id, `#`, its number


def _one_file(a: str, b: str) -> bool:
    """Whether two ids are two parts of one file's document (a record's own id of that shape counts too)."""
    first, second = _PART_ID.fullmatch(a), _PART_ID.fullmatch(b)
    return first is not None and second is not None and first[1] == second[1]


class UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass(frozen=True)
class DocumentKey:
    """What the keep rule and a cluster need of a document, where its text is elsewhere (the ray engine)."""

    id: str
    length: int
    richness: int
    numbers: int = 0  # text.number_mask of its text

    @classmethod
    def of(cls, document: Document) -> DocumentKey:
        return cls(document.id, len(document.text), richness(document), number_mask(document.text))


def text_length(document: Document | DocumentKey) -> int:
    """Characters of a document's text, from the document or its key."""
    return document.length if isinstance(document, DocumentKey) else len(document.text)


def richness(document: Document) -> int:
    return sum(1 for v in document.metadata.values() if v not in (None, "", [], {}))


def _keep_key(policy: KeepPolicy, index: int, document: Document | DocumentKey) -> tuple[float, ...]:
    """Smaller is better; input order breaks every tie, so the choice is deterministic."""
    key = isinstance(document, DocumentKey)
    if policy == "longest":
        return (-(document.length if key else len(document.text)), index)  # type: ignore[union-attr]
    if policy == "richest_metadata":
        return (-(document.richness if key else richness(document)), index)  # type: ignore[union-attr,arg-type]
    return (index,)


def keep_ranks(documents: Sequence[Document | DocumentKey], keep: KeepPolicy) -> list[int]:
    """Each document's place in keep order (0: kept before any other)."""
    if keep == "first":
        return list(range(len(documents)))  # input order itself
    order = sorted(range(len(documents)), key=lambda i: _keep_key(keep, i, documents[i]))
    ranks = [0] * len(documents)
    for rank, index in enumerate(order):
        ranks[index] = rank
    return ranks


def clusters_by_kept(
    documents: Sequence[Document | DocumentKey],
    pairs: Iterable[tuple[int, int, float]],
    method: str,
    keep: KeepPolicy = "first",
    confirm: Callable[[int, int], float | None] | None = None,
) -> list[DuplicateCluster]:
    """One cluster per kept document that has copies: its members are the kept one and the documents removed as
    its copies, each with its own similarity to the kept one (`to_kept`); `similarity` is the lowest of those.

    `confirm(a, b)`, when given, turns `pairs` into candidates: a pair counts only with the similarity it returns
    (None: not similar enough), and it is asked only of the pairs that can remove something, those whose document
    earlier in keep order was kept (the same clusters as confirming every pair first, for less work)."""
    neighbours: dict[int, list[tuple[int, float]]] = {}
    for a, b, similarity in pairs:
        neighbours.setdefault(a, []).append((b, similarity))
        neighbours.setdefault(b, []).append((a, similarity))
    kept: set[int] = set()
    copies: dict[int, list[tuple[int, float]]] = {}
    for node in sorted(neighbours, key=lambda i: _keep_key(keep, i, documents[i])):
        earlier = ((k, s) for k, s in neighbours[node] if k in kept)
        if confirm is not None:
            earlier = ((k, s) for k, _ in earlier if (s := confirm(node, k)) is not None)
        best = max(((s, -k) for k, s in earlier), default=None)
        if best is None:
            kept.add(node)
        else:
            copies.setdefault(-best[1], []).append((node, best[0]))
    clusters = []
    for original in sorted(copies):
        removed = sorted(copies[original])
        clusters.append(
            DuplicateCluster.model_construct(  # built from our own ids and floats: nothing to validate
                cluster_id=f"{method}-{documents[original].id}",
                method=method,
                kept=documents[original].id,
                members=[documents[original].id] + [documents[i].id for i, _ in removed],
                similarity=float(round(min(s for _, s in removed), 4)),
                to_kept={documents[i].id: float(round(s, 4)) for i, s in removed},
            )
        )
    return clusters


def clusters_from_pairs(
    documents: Sequence[Document | DocumentKey],
    pairs: Iterable[tuple[int, int, float]],
    method: str,
    keep: KeepPolicy = "first",
) -> list[DuplicateCluster]:
    """Connected components of the similarity graph; each one's lowest joining similarity is recorded."""
    union = UnionFind()
    lowest: dict[int, float] = {}
    edges = list(pairs)
    for a, b, _ in edges:
        union.union(a, b)
    for a, _, similarity in edges:
        root = union.find(a)
        lowest[root] = min(lowest.get(root, 1.0), similarity)
    groups: dict[int, list[int]] = {}
    for node in union.parent:
        groups.setdefault(union.find(node), []).append(node)
    clusters = []
    for root, members in sorted(groups.items()):
        if len(members) < 2:
            continue
        members.sort()
        kept = min(members, key=lambda i: _keep_key(keep, i, documents[i]))
        clusters.append(
            DuplicateCluster.model_construct(
                cluster_id=f"{method}-{documents[members[0]].id}",
                method=method,
                kept=documents[kept].id,
                members=[documents[i].id for i in members],
                similarity=float(round(lowest.get(root, 1.0), 4)),
            )
        )
    return clusters


def semantic_clusters(
    documents: Sequence[Document | DocumentKey], pairs: list[tuple[int, int, float]], keep: KeepPolicy
) -> list[DuplicateCluster]:
    """The semantic methods' keep rule (both engines): `clusters_by_kept` on the cosine pairs, each pair confirmed
    by the judge where one is active (`PAIR_JUDGE`); where `SET_APART` is active, first without the pairs whose
    texts' numbers conflict (recorded there), and where `LENGTH_APART` is, without the pairs of very unequal length;
    where `PARTS_APART` is, without the pairs of two parts of one file (`manual#5`, `manual#6`: two stretches of one
    document are alike in topic and style, not copies; an exact or near copy is still MinHash's); where
    `WORDS_APART` is, without the pairs whose texts share too few of their words (two texts on one subject)."""
    parts = PARTS_APART.get()
    if parts is not None:
        pairs = _set_apart(documents, pairs, parts, lambda a, b: _one_file(documents[a].id, documents[b].id))
    lengths = LENGTH_APART.get()
    if lengths is not None:
        pairs = _lengths_comparable(documents, pairs, lengths)
    apart = SET_APART.get()
    if apart is not None:
        pairs = _numbers_agree(documents, pairs, apart)
    words = WORDS_APART.get()
    if words is not None:
        pairs = _words_shared(documents, pairs, words)
    judge = PAIR_JUDGE.get()
    if judge is None:
        return clusters_by_kept(documents, pairs, "semantic", keep)
    return judge.clusters(documents, pairs, keep)


def _set_apart(
    documents: Sequence[Document | DocumentKey],
    pairs: list[tuple[int, int, float]],
    apart: SetApart,
    conflict: Callable[[int, int], bool],
) -> list[tuple[int, int, float]]:
    """The pairs for which `conflict(a, b)` is false; the others go to `apart` (a rule's pairs kept apart)."""
    kept = []
    for a, b, similarity in pairs:
        if conflict(a, b):
            apart.add(documents[a].id, documents[b].id, float(similarity))
        else:
            kept.append((a, b, similarity))
    return kept


def _lengths_comparable(
    documents: Sequence[Document | DocumentKey], pairs: list[tuple[int, int, float]], rule: LengthRule
) -> list[tuple[int, int, float]]:
    """The pairs whose longer text is at most `rule.ratio` times the shorter; the others go to `rule.apart`."""

    def unequal(a: int, b: int) -> bool:
        shorter, longer = sorted((max(1, text_length(documents[a])), max(1, text_length(documents[b]))))
        return longer > rule.ratio * shorter

    return _set_apart(documents, pairs, rule.apart, unequal)


def _numbers_agree(
    documents: Sequence[Document | DocumentKey], pairs: list[tuple[int, int, float]], apart: SetApart
) -> list[tuple[int, int, float]]:
    """The pairs whose two texts' numbers do not conflict (text.numbers_conflict); the others go to `apart`."""
    masks: dict[int, int] = {}

    def mask(index: int) -> int:
        if index not in masks:
            document = documents[index]
            key = isinstance(document, DocumentKey)
            masks[index] = document.numbers if key else number_mask(document.text)  # type: ignore[union-attr]
        return masks[index]

    return _set_apart(documents, pairs, apart, lambda a, b: numbers_conflict(mask(a), mask(b)))


def _words_shared(
    documents: Sequence[Document | DocumentKey], pairs: list[tuple[int, int, float]], rule: WordsRule
) -> list[tuple[int, int, float]]:
    """The pairs whose two texts share at least `rule.share` of their distinct content words; the others go to
    `rule.apart`. Each text's `word_set` is made from the document's text, or taken from `documents.word_sets`
    (index -> set) where the sequence holds keys without texts (the Ray engine fills it for the pairs' members)."""
    held: dict[int, np.ndarray] = getattr(documents, "word_sets", {})
    sets: dict[int, np.ndarray] = {}

    def words(index: int) -> np.ndarray:
        if index not in sets:
            document = documents[index]
            sets[index] = held[index] if isinstance(document, DocumentKey) else word_set(document.text)
        return sets[index]

    return _set_apart(documents, pairs, rule.apart, lambda a, b: shared_words(words(a), words(b)) < rule.share)
