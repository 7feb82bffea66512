"""The run's spending cap: `qa.max_cost_usd` and `qa.max_total_tokens`, over everything the run sends.

Before each HTTP request the backend reserves the request's worst case: its prompt at one token per byte (a
byte-level tokenizer never needs more) plus `qa.max_tokens` of completion. A request goes only if what the run
has spent (every earlier stage attempt of the run, from its ledger), what is reserved by the requests in flight
and this worst case together stay within the cap; otherwise it raises BudgetReachedError and is not sent. When
the reply comes, the reservation is replaced by what the server billed. So the cap is never crossed, at the
price of stopping up to one worst case per request in flight short of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llm_pipeline.config import ModelPrice
from llm_pipeline.errors import BudgetReachedError
from llm_pipeline.qa.checkpoint import Usage

MESSAGE_OVERHEAD = 4  # tokens a chat message costs beyond its text (role, separators)


def worst_case(messages: list[dict[str, str]], max_completion: int) -> Usage:
    prompt = sum(len(str(m.get("content", "")).encode()) + MESSAGE_OVERHEAD for m in messages) + 3
    return Usage(prompt_tokens=prompt, completion_tokens=max_completion)


@dataclass
class Budget:
    max_cost_usd: float | None
    max_total_tokens: int | None
    price: ModelPrice | None
    spent: Usage = field(default_factory=Usage)  # billed to this run so far
    reserved: Usage = field(default_factory=Usage)  # the worst cases of the requests in flight
    refused: int = 0  # requests not sent because of the cap
    section: str = "qa"  # whose cap, in the messages (the judge's is evaluation.judge)

    @property
    def capped(self) -> bool:
        return self.max_cost_usd is not None or self.max_total_tokens is not None

    def cost(self, usage: Usage) -> float:
        if self.price is None:
            return 0.0
        return (
            usage.prompt_tokens * self.price.input_per_million + usage.completion_tokens * self.price.output_per_million
        ) / 1_000_000

    def reserve(self, worst: Usage) -> Usage:
        """Hold `worst` for a request about to be sent, or raise BudgetReachedError naming the cap."""
        if not self.capped:
            return Usage()
        after = self.spent + self.reserved + worst
        tokens = after.prompt_tokens + after.completion_tokens
        if self.max_total_tokens is not None and tokens > self.max_total_tokens:
            self.refused += 1
            raise BudgetReachedError(
                f"{self.section}.max_total_tokens {self.max_total_tokens:,} reached ({self.summary()})"
            )
        if self.max_cost_usd is not None and self.cost(after) > self.max_cost_usd:
            self.refused += 1
            raise BudgetReachedError(
                f"{self.section}.max_cost_usd ${self.max_cost_usd:,.4f} reached ({self.summary()})"
            )
        self.reserved += worst
        return worst

    def settle(self, held: Usage, billed: Usage | None) -> None:
        """The request came back: its reservation goes, what it was billed (if it said) stays."""
        self.reserved = Usage(
            prompt_tokens=self.reserved.prompt_tokens - held.prompt_tokens,
            completion_tokens=self.reserved.completion_tokens - held.completion_tokens,
        )
        if billed is not None:
            self.spent += billed

    def summary(self) -> str:
        tokens = self.spent.prompt_tokens + self.spent.completion_tokens
        return f"spent ${self.cost(self.spent):,.4f}, {tokens:,} tokens by this run"
