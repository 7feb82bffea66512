"""The generate-benchmark stage: items drawn from the QA pairs, stratified by category and difficulty, plus
adversarial variants, with a benchmark card that shows the distribution.

Difficulty (a documented heuristic, `difficulty_of`): points for a long answer (> 8 words), a numeric answer,
an answer of several clauses (a comma or "and"), and little word overlap between question and answer's
sentence; 0 points easy, 1 medium, 2 or more hard.

Adversarial variants of an original item (`adversarial` names the type, `original_id` the item):
  unanswerable: the question with the context of a document from another category; the right answer is a
                refusal (`REFUSAL`).
  distractor:   the context with a sentence from another document inserted before the answer's sentence.
  typo:         character swaps in the question's longer words.
  numeric:      every number of the answer changed in the context and the reference alike, so a model must
                read the context rather than remember the training data.
  negated:      the question negated ("What does X not cost?"), which the context does not answer: the right
                answer is a refusal; a model that ignores the "not" answers the original.
  paraphrase:   the question reworded (rules for common shapes, else a framing prefix); same answer.

Categories: a document's own `category` when it is one of the configured categories; else keyword hits
(`category_keywords`); else the closest `category_descriptions` by MiniLM cosine, if above
`category_min_similarity`; else `other`.

Contamination: the QA pairs not drawn into the benchmark are the training set (`train_pairs.jsonl`). A candidate
item whose question or answer shares `contamination_threshold` of its word `contamination_ngram`-grams with
another pair is dropped before sampling, and counted in the card (texts shorter than n words are not checked).
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass

from llm_pipeline.config import BenchmarkConfig
from llm_pipeline.records import BENCHMARK_VERSION, BenchmarkItem, Difficulty, Document, QAPair
from llm_pipeline.text import DECIMAL, REFUSAL, UNSPACED, split_sentences, words_of

__all__ = ["BENCHMARK_VERSION", "build_benchmark", "difficulty_of"]
ADVERSARIAL_TYPES = ("unanswerable", "distractor", "typo", "numeric", "negated", "paraphrase")
_AUX = re.compile(
    r"^(What|How much|How many|Which|Who|Where|When) (does|do|did|can|will|should|may|must) (.+) (\w+)\?$"
)
_COPULA_Q = re.compile(r"^(What|Which|Who) (is|are|was|were) (.+)\?$")
_PARAPHRASES = [
    (re.compile(r"^How much does (.+) cost\?$"), r"What is the price of \1?"),
    (re.compile(r"^How much do (.+) cost\?$"), r"What is the price of \1?"),
    (re.compile(r"^What does (.+) deliver\?$"), r"What is delivered by \1?"),
    (re.compile(r"^What do (.+) deliver\?$"), r"What is delivered by \1?"),
    (re.compile(r"^What can (.+) reduce\?$"), r"What is reduced by \1?"),
    (re.compile(r"^What is (.+)\?$"), r"Can you say what \1 is?"),
]
_FRAMES = ("According to the context, {q}", "Based on the text, {q}", "From what the passage says, {q}")


def difficulty_of(question: str, answer: str, context: str) -> Difficulty:
    points = 0
    answer_words = answer.split()
    points += len(answer_words) > 8
    points += bool(DECIMAL.search(answer))
    points += ("," in answer) or (" and " in answer)
    sentence = next((s for s in split_sentences(context) if answer in s), context)
    q_words = set(words_of(question))
    s_words = set(words_of(sentence)) - set(words_of(answer))
    overlap = len(q_words & s_words) / max(1, len(s_words))
    points += overlap < 0.5
    return "easy" if points == 0 else "medium" if points == 1 else "hard"


def _keyword_pattern(keyword: str) -> str:
    """A category keyword as a whole word (`fee` is not in `coffee`); one in Chinese, Japanese or Thai, whose words
    are not spaced, anywhere (`\\b` fell between no two of its characters: `充电` was never found in `快速充电站`)."""
    escaped = re.escape(keyword.lower())
    return escaped if UNSPACED.search(keyword) else rf"\b{escaped}\b"


def classify_documents(documents: list[Document], config: BenchmarkConfig) -> dict[str, str]:
    """document id -> category, by metadata, then keywords, then description similarity, else `other`."""
    out: dict[str, str] = {}
    undecided: list[Document] = []
    keyword_patterns = {
        category: re.compile("|".join(_keyword_pattern(k) for k in words))
        for category, words in config.category_keywords.items()
        if words
    }
    for document in documents:
        if document.category in config.categories:
            out[document.id] = document.category
            continue
        text = document.text.lower()
        hits = {c: len(p.findall(text)) for c, p in keyword_patterns.items()}
        best = max(config.categories, key=lambda c: hits.get(c, 0))
        if hits.get(best, 0) > 0:
            out[document.id] = best
        else:
            undecided.append(document)
    if undecided and config.category_descriptions:
        from llm_pipeline.models.embeddings import embed

        names = list(config.category_descriptions)
        vectors = embed([config.category_descriptions[n] for n in names] + [d.text[:2000] for d in undecided])
        described, docs = vectors[: len(names)], vectors[len(names) :]
        similarity = docs @ described.T
        for document, row in zip(undecided, similarity, strict=True):
            k = int(row.argmax())
            out[document.id] = names[k] if row[k] >= config.category_min_similarity else "other"
    for document in undecided:
        out.setdefault(document.id, "other")
    return out


def _ngrams(text: str, n: int) -> set[str]:
    """Word n-grams; a text shorter than n words has none: a short answer ("10 minutes", "$0.45 per kWh")
    recurring across questions is a common value, not evidence that the item leaked."""
    words = words_of(text)
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def contaminated(pairs: list[QAPair], n: int, threshold: float) -> dict[str, float]:
    """pair id -> overlap, for pairs whose question or answer shares >= threshold of its n-grams with another pair."""
    owners: dict[str, set[str]] = defaultdict(set)
    grams = {}
    for pair in pairs:
        grams[pair.id] = (_ngrams(pair.question, n), _ngrams(pair.answer, n))
        for g in grams[pair.id][0] | grams[pair.id][1]:
            owners[g].add(pair.id)
    flagged = {}
    for pair in pairs:
        worst = 0.0
        for part in grams[pair.id]:
            if part:
                shared = sum(1 for g in part if owners[g] - {pair.id})
                worst = max(worst, shared / len(part))
        if worst >= threshold:
            flagged[pair.id] = round(worst, 3)
    return flagged


def _stratified_sample(items: list[BenchmarkItem], size: int, rng: random.Random) -> list[BenchmarkItem]:
    """Round-robin over (category, difficulty) cells, each shuffled, so small cells are not crowded out."""
    cells: dict[tuple[str, str], list[BenchmarkItem]] = defaultdict(list)
    for item in items:
        cells[(item.category, item.difficulty)].append(item)
    for cell in cells.values():
        rng.shuffle(cell)
    order = sorted(cells)
    chosen: list[BenchmarkItem] = []
    while len(chosen) < size and any(cells[k] for k in order):
        for key in order:
            if cells[key] and len(chosen) < size:
                chosen.append(cells[key].pop())
    return chosen


def _typo(text: str, rng: random.Random) -> str:
    """Swap two different adjacent letters inside up to two words; a question of short words gets a doubled
    letter instead, so the variant always differs from its original."""
    words = text.split()

    def swaps(word: str) -> list[int]:
        return [
            j for j in range(1, len(word) - 2) if word[j].isalpha() and word[j + 1].isalpha() and word[j] != word[j + 1]
        ]

    candidates = [i for i, w in enumerate(words) if len(w) > 3 and swaps(w)]
    for i in rng.sample(candidates, min(2, len(candidates))):
        w = words[i]
        j = rng.choice(swaps(w))
        words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    if not candidates:
        i = max(range(len(words)), key=lambda k: len(words[k]))
        words[i] = words[i][:1] + words[i]
    return " ".join(words)


def _negate(question: str) -> str | None:
    """`What does X cost?` -> `What does X not cost?`; `What is X?` -> `What is not X?`; None for other shapes."""
    if m := _AUX.match(question):
        return f"{m.group(1)} {m.group(2)} {m.group(3)} not {m.group(4)}?"
    if m := _COPULA_Q.match(question):
        return f"{m.group(1)} {m.group(2)} not {m.group(3)}?"
    return None


def _paraphrase(question: str, rng: random.Random) -> str:
    for pattern, replacement in _PARAPHRASES:
        if pattern.match(question):
            return pattern.sub(replacement, question)
    lowered = question[:1].lower() + question[1:] if question[1:2].islower() or question[1:2] == " " else question
    return rng.choice(_FRAMES).format(q=lowered)


def _perturb_numbers(text: str, mapping: dict[str, str]) -> str:
    return DECIMAL.sub(lambda m: mapping.get(m.group(0), m.group(0)), text)


def adversarial_variants(item: BenchmarkItem, documents: list[Document], rng: random.Random) -> list[BenchmarkItem]:
    others = [d for d in documents if d.id != item.source_document_id and d.category != item.category]
    variants: list[BenchmarkItem] = []

    def variant(kind: str, **changes: object) -> BenchmarkItem:
        return item.model_copy(
            update={"id": f"{item.id}-{kind}", "adversarial": kind, "original_id": item.id, **changes}
        )

    if others:
        other = rng.choice(others)
        if item.answer not in other.text:
            variants.append(variant("unanswerable", context=other.text, answer=REFUSAL, answerable=False))
        sentences = split_sentences(item.context)
        at = next((i for i, s in enumerate(sentences) if item.answer in s), 0)
        distractor = rng.choice(split_sentences(other.text))
        variants.append(variant("distractor", context=" ".join(sentences[:at] + [distractor] + sentences[at:])))
    variants.append(variant("typo", question=_typo(item.question, rng)))
    negated = _negate(item.question)
    if negated:
        variants.append(variant("negated", question=negated, answer=REFUSAL, answerable=False))
    variants.append(variant("paraphrase", question=_paraphrase(item.question, rng)))
    numbers = DECIMAL.findall(item.answer)
    if numbers:
        mapping = {}
        for n in numbers:
            value = float(n)
            new = value * rng.choice([0.5, 0.75, 1.5, 2.0]) if value else value + 1
            mapping[n] = f"{new:.2f}" if "." in n else str(max(1, round(new)))
        variants.append(
            variant(
                "numeric",
                context=_perturb_numbers(item.context, mapping),
                answer=_perturb_numbers(item.answer, mapping),
            )
        )
    return variants


@dataclass
class BenchmarkResult:
    items: list[BenchmarkItem]
    card: str
    train_pairs: list[QAPair]
    contaminated: dict[str, float]  # pair id -> overlap, dropped from the benchmark's pool

    def counts(self) -> dict[str, int]:
        originals = sum(1 for i in self.items if i.adversarial is None)
        counts = {
            "items": len(self.items),
            "originals": originals,
            "adversarial": len(self.items) - originals,
            "contaminated_dropped": len(self.contaminated),
            "train_pairs": len(self.train_pairs),
        }
        for kind, n in Counter(i.adversarial for i in self.items if i.adversarial).items():
            counts[f"adversarial.{kind}"] = n
        return counts


def build_benchmark(
    pairs: list[QAPair], documents: list[Document], config: BenchmarkConfig, domain: str
) -> BenchmarkResult:
    rng = random.Random(config.seed)
    by_id = {d.id: d for d in documents}
    categories = classify_documents(documents, config)
    dirty = contaminated(pairs, config.contamination_ngram, config.contamination_threshold)
    pool = []
    for pair in pairs:
        document = by_id.get(pair.document_id)
        if document is None or pair.id in dirty:
            continue
        difficulty = difficulty_of(pair.question, pair.answer, document.text)
        if difficulty not in config.difficulty_levels:
            continue
        pool.append(
            BenchmarkItem(
                id=f"bench-{pair.id}",
                question=pair.question,
                answer=pair.answer,
                context=document.text,
                category=categories[document.id],
                difficulty=difficulty,
                source_document_id=document.id,
            )
        )
    n_adversarial = round(config.size * config.adversarial_fraction) if config.include_adversarial else 0
    originals = _stratified_sample(pool, config.size - n_adversarial, rng)
    items = list(originals)
    if n_adversarial:
        variants = [v for item in originals for v in adversarial_variants(item, documents, rng)]
        # Spread the variant budget over the types, in turn, so each type is represented.
        by_type: dict[str, list[BenchmarkItem]] = defaultdict(list)
        for v in variants:
            by_type[v.adversarial or ""].append(v)
        for kind_items in by_type.values():
            rng.shuffle(kind_items)
        while n_adversarial and any(by_type.values()):
            for kind in ADVERSARIAL_TYPES:
                if by_type.get(kind) and n_adversarial:
                    items.append(by_type[kind].pop())
                    n_adversarial -= 1
    held_out = {i.id.removeprefix("bench-") for i in originals}
    train = [p for p in pairs if p.id not in held_out]
    return BenchmarkResult(
        items=items, card=benchmark_card(items, domain, config, len(dirty)), train_pairs=train, contaminated=dirty
    )


def benchmark_card(items: list[BenchmarkItem], domain: str, config: BenchmarkConfig, dropped: int = 0) -> str:
    categories = sorted({i.category for i in items})
    levels = [d for d in ("easy", "medium", "hard") if d in config.difficulty_levels]
    grid = Counter((i.category, i.difficulty) for i in items if i.adversarial is None)
    lines = [
        f"# Benchmark card: {domain}",
        "",
        f"Version {BENCHMARK_VERSION}; {len(items)} items; seed {config.seed}; drawn from the run's QA pairs.",
        "",
        "## Originals by category and difficulty",
        "",
        "| category | " + " | ".join(levels) + " | total |",
        "|---" * (len(levels) + 2) + "|",
    ]
    for category in categories:
        row = [grid[(category, level)] for level in levels]
        lines.append(f"| {category} | " + " | ".join(map(str, row)) + f" | {sum(row)} |")
    adversarial = Counter(i.adversarial for i in items if i.adversarial)
    lines += ["", "## Adversarial variants by category and type", ""]
    if adversarial:
        kinds = sorted(adversarial)
        by_cell = Counter((i.category, i.adversarial) for i in items if i.adversarial)
        lines += ["| category | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
        for category in categories:
            lines.append(f"| {category} | " + " | ".join(str(by_cell[(category, k)]) for k in kinds) + " |")
        lines.append("| **all** | " + " | ".join(str(adversarial[k]) for k in kinds) + " |")
        by_level = Counter((i.difficulty, i.adversarial) for i in items if i.adversarial)
        lines += ["", "| difficulty | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
        for level in levels:
            lines.append(f"| {level} | " + " | ".join(str(by_level[(level, k)]) for k in kinds) + " |")
    else:
        lines.append("None (include_adversarial is off).")
    lines += [
        "",
        "## Contamination",
        "",
        f"{dropped} candidate items dropped: their question or answer shares at least "
        f"{config.contamination_threshold:.0%} of its word {config.contamination_ngram}-grams with another QA pair "
        "(the training set is `train_pairs.jsonl`: the QA pairs less this benchmark's originals).",
        "",
        "Difficulty, categories and variant types are defined in `llm_pipeline/benchmark.py`.",
    ]
    return "\n".join(lines) + "\n"
