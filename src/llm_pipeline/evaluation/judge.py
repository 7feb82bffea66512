"""An LLM judge over the candidates' answers, asked through QA generation's backends (an OpenAI-compatible endpoint
with its limits, error table and ledger, or a local transformers model), with its own journal.

Pointwise: each answer scored 1-5 on correct (against the reference), grounded (in the context) and complete, with
a short reason, as one strict JSON object. Pairwise (two candidates): each item asked in both orders; a preference
counts only when both orders agree, otherwise the item is a tie, and the share of items whose two orders disagree
is reported: the judge's position bias. A reply that is not the JSON asked for is sent back with the problem
(`max_format_retries` times), then recorded as failed: it is never scored. Every verdict is journaled by what
decides it (the texts, the order, the prompt version and digest, the judge), so a rerun asks only what is new.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jinja2
from pydantic import BaseModel, Field

from llm_pipeline.config import JudgeConfig, LLMJudgeSettings, ModelPrice, QAConfig, Secrets
from llm_pipeline.errors import BudgetReachedError, DataValidationError, OutputFormatError, TransientError
from llm_pipeline.evaluation.metrics import bootstrap_ci
from llm_pipeline.io import text_hash
from llm_pipeline.logging import get_logger
from llm_pipeline.qa.backends import Completion, Job
from llm_pipeline.qa.budget import Budget
from llm_pipeline.qa.checkpoint import Journal, Ledger, Usage, request_key
from llm_pipeline.qa.chunking import Chunk
from llm_pipeline.qa.prompts.templates import defuse
from llm_pipeline.qa.requests import send_all
from llm_pipeline.records import BenchmarkItem, Document, Prediction, utc_now

log = get_logger("judge")

PROMPT_VERSION = "judge-v1"
PROMPT_DIR = Path(__file__).parent / "judge_prompts" / PROMPT_VERSION
CRITERIA = ("correct", "grounded", "complete")
POINTWISE_SHAPE = '{"correct": <1-5>, "grounded": <1-5>, "complete": <1-5>, "reason": "<one short sentence>"}'
PAIRWISE_SHAPE = '{"winner": "1" | "2" | "tie", "reason": "<one short sentence>"}'
_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


class Verdict(BaseModel):
    """One finished judge request: its verdict, or why it failed (with the judge's last raw reply)."""

    key: str
    kind: Literal["pointwise", "pairwise", "duplicate"]  # duplicate: dedup/judge.py's semantic pairs
    status: Literal["ok", "failed"]
    verdict: dict[str, Any] = Field(default_factory=dict)
    reason: str | None = None
    raw: str | None = None
    usage: Usage = Field(default_factory=Usage)
    attempts: int = 1
    model: str
    prompt_version: str
    timestamp: str


@dataclass(frozen=True)
class Prompts:
    version: str
    digest: str
    templates: dict[str, jinja2.Template]

    def render(self, name: str, **values: str) -> str:
        return self.templates[name].render(**{k: defuse(v) for k, v in values.items()}).strip()


TEMPLATES = ("pointwise_system", "pointwise_user", "pairwise_system", "pairwise_user", "repair")


def load_prompts(
    folder: Path | None = None,
    names: tuple[str, ...] = TEMPLATES,
    packaged: Path = PROMPT_DIR,
    version: str = PROMPT_VERSION,
) -> Prompts:
    """The packaged templates (`version`), or a folder's (version custom-<digest>: editing a prompt never reuses
    verdicts given to the old one)."""
    texts = {name: ((folder or packaged) / f"{name}.j2").read_text(encoding="utf-8") for name in names}
    digest = hashlib.sha256("\x00".join(texts[n] for n in names).encode()).hexdigest()[:12]
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
    version = version if folder is None else f"custom-{digest}"
    return Prompts(version, digest, {name: env.from_string(text) for name, text in texts.items()})


def json_object(text: str) -> dict[str, Any]:
    found = _OBJECT.search(text)
    if not found:
        raise OutputFormatError("no JSON object in the reply")
    try:
        value = json.loads(found.group(0))
    except ValueError as exc:
        raise OutputFormatError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise OutputFormatError("the reply is not a JSON object")
    return value


def parse_pointwise(text: str) -> dict[str, Any]:
    value = json_object(text)
    scores: dict[str, Any] = {}
    for criterion in CRITERIA:
        score = value.get(criterion)
        if isinstance(score, bool) or not isinstance(score, int | float) or score != int(score) or not 1 <= score <= 5:
            raise OutputFormatError(f"{criterion} must be an integer from 1 to 5, got {score!r}")
        scores[criterion] = int(score)
    scores["reason"] = str(value.get("reason", ""))[:500]
    return scores


def parse_pairwise(text: str) -> dict[str, Any]:
    value = json_object(text)
    winner = str(value.get("winner", "")).strip().lower()
    if winner not in ("1", "2", "tie"):
        raise OutputFormatError(f'winner must be "1", "2" or "tie", got {value.get("winner")!r}')
    return {"winner": winner, "reason": str(value.get("reason", ""))[:500]}


def parse_duplicate(text: str) -> dict[str, Any]:
    value = json_object(text)
    duplicate = value.get("duplicate")
    if not isinstance(duplicate, bool):
        raise OutputFormatError(f"duplicate must be true or false, got {duplicate!r}")
    return {"duplicate": duplicate, "reason": str(value.get("reason", ""))[:500]}


DUPLICATE_SHAPE = '{"duplicate": true | false, "reason": "<one short sentence>"}'
PARSERS = {"pointwise": parse_pointwise, "pairwise": parse_pairwise, "duplicate": parse_duplicate}
SHAPES = {"pointwise": POINTWISE_SHAPE, "pairwise": PAIRWISE_SHAPE, "duplicate": DUPLICATE_SHAPE}


@dataclass
class Ask:
    """One judge request: which item and answers it is about, its conversation and key."""

    job: Job
    kind: Literal["pointwise", "pairwise", "duplicate"]
    item_id: str
    candidates: tuple[str, ...]  # pointwise: (candidate,); pairwise: (shown first, shown second); duplicate: ids


@dataclass
class JudgeResult:
    summary: dict[str, Any] = field(default_factory=lambda: {"enabled": False})
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per verdict, for judgements.jsonl


def _judged_items(items: list[BenchmarkItem], config: JudgeConfig) -> list[BenchmarkItem]:
    if config.max_items is None or len(items) <= config.max_items:
        return items
    chosen = set(random.Random(config.seed).sample(sorted(i.id for i in items), config.max_items))
    return [i for i in items if i.id in chosen]


def _ask(
    prompts: Prompts,
    config: JudgeConfig,
    kind: Literal["pointwise", "pairwise"],
    item: BenchmarkItem,
    candidates: tuple[str, ...],
    answers: tuple[str, ...],
) -> Ask:
    values = {"context": item.context, "question": item.question, "reference": item.answer}
    if kind == "pointwise":
        values["answer"] = answers[0]
    else:
        values["first"], values["second"] = answers
    key = request_key(
        kind=kind,
        texts=[text_hash(v) for _, v in sorted(values.items())],
        prompt=[prompts.version, prompts.digest],
        backend=config.backend,
        model=config.model,
        settings=[config.max_tokens],
    )
    messages = [
        {"role": "system", "content": prompts.render(f"{kind}_system")},
        {"role": "user", "content": prompts.render(f"{kind}_user", **values)},
    ]
    job = Job(key=key, document=Document(id=item.id, text=item.context), chunk=Chunk(0, 1, ""), messages=messages, n=1)
    return Ask(job, kind, item.id, candidates)


def build_asks(
    items: list[BenchmarkItem], predictions: Iterable[Prediction], config: JudgeConfig, pairs: list[tuple[str, str]]
) -> list[Ask]:
    prompts = load_prompts(config.prompt_dir)
    answers: dict[str, dict[str, str]] = defaultdict(dict)  # candidate -> item -> answer
    for p in predictions:
        answers[p.candidate][p.item_id] = p.prediction
    asks = []
    pointwise = (config.candidates or sorted(answers)) if config.pointwise else []
    for item in _judged_items(items, config):
        for candidate in pointwise:
            if item.id in answers.get(candidate, {}):
                asks.append(_ask(prompts, config, "pointwise", item, (candidate,), (answers[candidate][item.id],)))
        for a, b in pairs:
            if item.id in answers.get(a, {}) and item.id in answers.get(b, {}):
                first, second = answers[a][item.id], answers[b][item.id]
                asks.append(_ask(prompts, config, "pairwise", item, (a, b), (first, second)))
                asks.append(_ask(prompts, config, "pairwise", item, (b, a), (second, first)))
    return asks


def judge_backend(config: LLMJudgeSettings) -> Any:
    settings = QAConfig(
        backend=config.backend,
        model_name=config.model,
        base_url=config.base_url,
        concurrency=config.concurrency,
        requests_per_minute=config.requests_per_minute,
        max_tokens=config.max_tokens,
        temperature=0.0,
        response_format="text",  # any server; the reply is checked here, strictly
        request_timeout_s=config.request_timeout_s,
        retry=config.retry,
        device=config.device,
        dtype=config.dtype,
        batch_size=config.batch_size,
    )
    if config.backend == "local":
        from llm_pipeline.qa.local_backend import LocalBackend

        return LocalBackend(settings)
    from llm_pipeline.qa.openai_backend import OpenAIBackend

    key = Secrets().openai_api_key
    return OpenAIBackend(
        settings,
        key.get_secret_value() if key else None,
        least_reply_tokens=48,  # a verdict: scores or a yes/no, and a short reason
        too_long="serve the judge's model with a longer context: its prompt holds the texts it judges",
    )


@dataclass
class _Verdicts:
    """Settles each judge reply for QA's `send_all` loop: journaled as a verdict, sent back with the problem
    (True: another round), or recorded failed; a request still failing after the policy's tries is counted and
    not journaled (the next run asks it again)."""

    journal: Journal
    asks: dict[int, Ask]  # id(job) -> its ask
    config: LLMJudgeSettings
    prompts: Prompts
    failed: int = 0

    def settle(self, job: Job, outcome: Completion | BaseException, round_: int) -> bool:
        ask = self.asks[id(job)]
        if isinstance(outcome, TransientError | BudgetReachedError):
            self.failed += 1
            log.warning("judge_request_failed", error=f"{type(outcome).__name__}: {outcome}"[:300])
            return False
        if isinstance(outcome, DataValidationError):
            self._record(ask, "failed", reason=f"rejected: {outcome}")
            return False
        if isinstance(outcome, BaseException):
            raise outcome  # config, model load, or a bug: the stage fails
        job.usage += outcome.usage
        job.attempts += outcome.attempts
        job.raw = outcome.text
        try:
            if outcome.finish_reason == "length":
                raise OutputFormatError("the reply was cut off at the token limit: keep the reason short")
            verdict = PARSERS[ask.kind](outcome.text)
        except OutputFormatError as problem:
            if round_ < self.config.max_format_retries:
                log.warning("judge_reply_invalid", problem=str(problem), retry=round_ + 1, item=ask.item_id)
                repair = self.prompts.render("repair", problem=str(problem).rstrip("."), shape=SHAPES[ask.kind])
                job.messages = [
                    *job.messages,
                    {"role": "assistant", "content": outcome.text},
                    {"role": "user", "content": repair},
                ]
                return True
            self._record(ask, "failed", reason=f"invalid verdict: {problem}")
            return False
        self._record(ask, "ok", verdict=verdict)
        return False

    def _record(
        self, ask: Ask, status: Literal["ok", "failed"], *, verdict: dict[str, Any] | None = None, reason: str = ""
    ) -> None:
        if status == "failed":
            log.warning("judge_verdict_failed", reason=reason[:300], item=ask.item_id, kind=ask.kind)
        self.journal.append(
            Verdict(
                key=ask.job.key,
                kind=ask.kind,
                status=status,
                verdict=verdict or {},
                reason=reason or None,
                raw=ask.job.raw if status == "failed" else None,
                usage=ask.job.usage,
                attempts=max(1, ask.job.attempts),
                model=str(self.config.model),
                prompt_version=self.prompts.version,
                timestamp=utc_now(),
            )
        )


def _rate(values: list[float]) -> dict[str, float]:
    low, high = bootstrap_ci(values)
    return {"rate": round(sum(values) / len(values), 6) if values else float("nan"), "low": low, "high": high}


def _spearman(a: list[float], b: list[float]) -> float | None:
    from scipy.stats import spearmanr

    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        return None  # undefined for a constant series
    return round(float(spearmanr(a, b).statistic), 4)


def summarize(
    asks: list[Ask], journal: Journal, predictions: Iterable[Prediction], pairs: list[tuple[str, str]]
) -> JudgeResult:
    """Aggregates from the journal's verdicts: pointwise means per candidate, pairwise rates per pair, and the
    judge's rank agreement with exact match and ROUGE-L."""
    result = JudgeResult(summary={"enabled": True})
    scores = {(p.candidate, p.item_id): p.scores for p in predictions}
    pointwise: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    failed: Counter[str] = Counter()
    orders: dict[tuple[tuple[str, str], str], dict[tuple[str, ...], str]] = defaultdict(dict)
    agreement: dict[str, list[float]] = defaultdict(list)
    usage = Usage()
    for ask in asks:
        verdict = journal.get(ask.job.key)
        if verdict is None:
            failed["not_answered"] += 1
            continue
        usage += verdict.usage
        row = {"item_id": ask.item_id, "kind": ask.kind, "candidates": list(ask.candidates), "status": verdict.status}
        # a failure with the judge's last reply: what to read before trusting (or replacing) the judge
        failure = {"reason": verdict.reason, "raw": verdict.raw}
        result.rows.append(row | ({"verdict": verdict.verdict} if verdict.status == "ok" else failure))
        if verdict.status != "ok":
            failed[ask.kind] += 1
            continue
        if ask.kind == "pointwise":
            [candidate] = ask.candidates
            mean = sum(verdict.verdict[c] for c in CRITERIA) / len(CRITERIA)
            for criterion in CRITERIA:
                pointwise[candidate][criterion].append(verdict.verdict[criterion])
            pointwise[candidate]["score"].append(mean)
            measured = scores.get((candidate, ask.item_id), {})
            if "exact_match" in measured and "rougeL" in measured:
                agreement["judge"].append(mean)
                agreement["exact_match"].append(measured["exact_match"])
                agreement["rougeL"].append(measured["rougeL"])
        else:
            pair = next(p for p in pairs if set(p) == set(ask.candidates))
            winner = verdict.verdict["winner"]
            shown = ask.candidates
            orders[(pair, ask.item_id)][shown] = "tie" if winner == "tie" else shown[int(winner) - 1]
    result.summary["pointwise"] = {
        candidate: {
            name: {"mean": round(sum(v) / len(v), 4), **dict(zip(("low", "high"), bootstrap_ci(v), strict=True))}
            for name, v in values.items()
        }
        | {"judged": len(values["score"])}
        for candidate, values in sorted(pointwise.items())
    }
    result.summary["pairwise"] = _pairwise(orders, pairs)
    result.summary["agreement"] = {
        "items": len(agreement["judge"]),
        "spearman_exact_match": _spearman(agreement["judge"], agreement["exact_match"]),
        "spearman_rougeL": _spearman(agreement["judge"], agreement["rougeL"]),
    }
    result.summary["failed"] = dict(failed)
    result.summary["requests"] = len(asks)
    result.summary["usage"] = usage.model_dump()
    return result


def _pairwise(
    orders: dict[tuple[tuple[str, str], str], dict[tuple[str, ...], str]], pairs: list[tuple[str, str]]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        first, second = pair
        wins, ties, losses, disagree = [], [], [], []
        for (p, _item), seen in orders.items():
            if p != pair or len(seen) < 2:
                continue  # an order failed: the item is not counted
            a, b = seen[(first, second)], seen[(second, first)]
            agreed = a == b
            disagree.append(float(not agreed))
            outcome = a if agreed else "tie"
            wins.append(float(outcome == second))
            ties.append(float(outcome == "tie"))
            losses.append(float(outcome == first))
        out[f"{second} vs {first}"] = {
            "first": first,
            "second": second,
            "items": len(wins),
            "win": _rate(wins) if wins else None,
            "tie": _rate(ties) if ties else None,
            "loss": _rate(losses) if losses else None,
            "order_disagreement": _rate(disagree) if disagree else None,
        }
    return out


def judge(
    items: list[BenchmarkItem],
    predictions: list[Prediction],
    config: JudgeConfig,
    pairs: list[tuple[str, str]],
    cache_dir: Path,
    run_id: str,
    prices: dict[str, Any] | None = None,
) -> JudgeResult:
    """Judge the answers; asks only what the journal in `cache_dir` does not hold; the cost of what this run sent
    comes from its ledger there."""
    if not config.enabled:
        return JudgeResult()
    prompts = load_prompts(config.prompt_dir)
    asks = build_asks(items, predictions, config, pairs)
    journal, sending = ask_all(asks, config, prompts, cache_dir, run_id, prices, "evaluation.judge")
    result = summarize(asks, journal, predictions, pairs)
    result.summary.update(sending)
    log.info(
        "judge_completed", sent=sending["sent_this_run"], failed=sending["still_failing"], **result.summary["failed"]
    )
    return result


def ask_all(
    asks: list[Ask],
    config: LLMJudgeSettings,
    prompts: Prompts,
    cache_dir: Path,
    run_id: str,
    prices: dict[str, ModelPrice] | None,
    section: str,
    backend: Callable[[], Any] | None = None,
) -> tuple[Journal, dict[str, Any]]:
    """Send the asks the journal in `cache_dir` does not hold (one request per key), under the spending cap, which
    counts what this run already sent (an earlier attempt of the stage, from the ledger); the journal, and what
    this run sent and cost (from its ledger). `section` names the config section in a cap's message. `backend`:
    where the caller keeps one open across calls (called only when there is something to send; the caller closes
    it); else one is opened and closed here."""
    from llm_pipeline.aio import run_sync

    journal = Journal(cache_dir / "journal.jsonl", Verdict)
    ledger = Ledger(cache_dir, run_id)
    todo = list({a.job.key: a for a in asks if a.job.key not in journal}.values())
    price = (prices or config.prices).get(str(config.model))
    budget = Budget(config.max_cost_usd, None, price, ledger.sent().usage, section=section)
    for ask in todo:
        ask.job.ledger = ledger
        ask.job.budget = budget if budget.capped else None
    log.info("judge_started", model=config.model, requests=len(asks), journaled=len(asks) - len(todo))
    failed = 0
    if todo:
        opened = backend() if backend is not None else judge_backend(config)
        try:
            verdicts = _Verdicts(journal, {id(a.job): a for a in todo}, config, prompts)
            jobs = [a.job for a in todo]
            run_sync(send_all(opened, jobs, verdicts, config.max_format_retries, what=f"judging ({section})"))
            failed = verdicts.failed
        finally:
            if backend is None:
                run_sync(opened.aclose())
    sent = ledger.sent()
    sending: dict[str, Any] = {
        "model": config.model,
        "backend": config.backend,
        "prompt_version": prompts.version,
        "sent_this_run": sent.requests,
        "http_requests_this_run": sent.http_requests,
        "usage_this_run": sent.usage.model_dump(),
        "still_failing": failed,
        "refused_by_cap": budget.refused,
    }
    if price is not None:
        sending["cost_usd_this_run"] = round(budget.cost(sent.usage), 6)
    return journal, sending
