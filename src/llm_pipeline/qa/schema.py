"""What a model must answer with: a pydantic schema, its JSON schema for response_format, and a tolerant parser.

Servers that honour `response_format: json_schema` return exactly this shape; others (older vLLM, llama.cpp
without grammar, small local models) wrap it in prose or code fences, leave trailing commas, or return a bare
list. `parse_pairs` accepts all of those and says precisely what is wrong otherwise, so the error can be sent
back to the model on the retry.
"""

from __future__ import annotations

import json
import re
from typing import Any

import json_repair
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llm_pipeline.errors import OutputFormatError

SCHEMA_NAME = "qa_pairs"


class GeneratedPair(BaseModel):
    model_config = ConfigDict(extra="ignore")

    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)


class GeneratedPairs(BaseModel):
    model_config = ConfigDict(extra="ignore")

    pairs: list[GeneratedPair]


def response_format(kind: str) -> dict[str, Any] | None:
    """The chat-completions `response_format` for kind json_schema | json_object | text."""
    if kind == "json_schema":
        schema = GeneratedPairs.model_json_schema()
        # Strict mode wants every object closed and every property required.
        schema["additionalProperties"] = False
        schema["$defs"]["GeneratedPair"]["additionalProperties"] = False
        return {"type": "json_schema", "json_schema": {"name": SCHEMA_NAME, "schema": schema, "strict": True}}
    if kind == "json_object":
        return {"type": "json_object"}
    return None


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def parse_pairs(text: str, expected: int) -> list[GeneratedPair]:
    """The pairs in a model's reply; raises OutputFormatError saying what to fix."""
    if not text or not text.strip():
        raise OutputFormatError("the reply was empty; answer with the JSON object only")
    candidate = text.strip()
    fenced = _FENCE.search(candidate)
    if fenced:
        candidate = fenced.group(1).strip()
    try:
        data: Any = json.loads(candidate)
    except json.JSONDecodeError:
        start = min((i for i in (candidate.find("{"), candidate.find("[")) if i >= 0), default=-1)
        if start < 0:
            raise OutputFormatError("the reply contains no JSON object; answer with the JSON object only") from None
        # Trailing commas, single quotes, prose after the object: repaired, then validated as strictly as ever.
        data = json_repair.loads(candidate[start:])
    if isinstance(data, list):
        data = {"pairs": data}
    if not isinstance(data, dict) or "pairs" not in data:
        raise OutputFormatError('the JSON must be an object with a "pairs" list')
    try:
        pairs = GeneratedPairs.model_validate(data).pairs
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False)[:5]
        )
        raise OutputFormatError(f"the JSON does not match the schema: {problems}") from None
    pairs = [p for p in pairs if p.question.strip() and p.answer.strip()]
    if not pairs:
        raise OutputFormatError("the pairs list is empty")
    return pairs[:expected]
