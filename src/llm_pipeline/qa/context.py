"""A model's context window, learnt from the server's refusals, so requests ask for a reply that fits.

A server refuses a request whose prompt plus `max_tokens` exceeds the model's context: vLLM started with
`--max-model-len 4096`, TGI with its max total tokens, OpenAI's per-model limits. Each says so in words, with numbers:
the limit, this prompt's tokens (the server's own count), or a cap on completion tokens alone. Those numbers are read
here; a refused request is sent again at once asking for what fits (not a retry: the policy's tries are untouched),
and every later request asks for at most the room its prompt leaves. A prompt that leaves too little room for any
reply is refused for good, with a reason that names the setting to change (`qa.chunk_words`).

Messages read (the shapes seen in servers' issue trackers; not recorded from servers here):
- vLLM >= 0.6: "'max_tokens' or 'max_completion_tokens' is too large: 8000. This model's maximum context length is
  4096 tokens and your request has 2778 input tokens (8000 > 4096 - 2778)."
- vLLM before, and OpenAI: "This model's maximum context length is 2048 tokens. However, you requested 2100 tokens
  (600 in the messages, 1500 in the completion)." / "... However, your messages resulted in 9000 tokens."
- OpenAI: "max_tokens is too large: 5000. This model supports at most 4096 completion tokens, whereas you provided
  5000."
- TGI (422): "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 2048. Given: 1887 `inputs`
  tokens and 1024 `max_new_tokens`" / "`max_new_tokens` must be <= 192".
- llama.cpp's server: `{"error": {"type": "exceed_context_size_error", "n_prompt_tokens": 5000, "n_ctx": 4096}}`.
A refusal without numbers ("maximum context length is exceeded") stays what it was: the request is rejected.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass
from typing import Any

MIN_REPLY_TOKENS = 128  # below this a QA reply cannot hold a pair in JSON: the request is refused for good
QA_REMEDY = "lower qa.chunk_words, or serve the model with a longer context"
MARGIN_TOKENS = 8  # below the learnt room, for a chat template's tokens the server counts and the estimate does not

_LIMIT = (
    re.compile(r"maximum context length is (\d+)", re.IGNORECASE),
    re.compile(r"tokens \+ `?max_new_tokens`? must be <= (\d+)", re.IGNORECASE),
)
_PROMPT = (
    re.compile(r"\((\d+) in the messages", re.IGNORECASE),
    re.compile(r"request has (\d+) input tokens", re.IGNORECASE),
    re.compile(r"messages resulted in (\d+) tokens", re.IGNORECASE),
    re.compile(r"Given: (\d+) `?inputs`? tokens", re.IGNORECASE),
)
_CAP = (
    re.compile(r"supports at most (\d+) completion tokens", re.IGNORECASE),
    re.compile(r"`?max_new_tokens`? must be <= (\d+)", re.IGNORECASE),  # read only where no limit was
)


@dataclass(frozen=True)
class ContextRefusal:
    """What a server said of its limits when it refused a request; None where it did not say."""

    limit: int | None  # prompt and completion together, tokens
    prompt: int | None  # this request's prompt, by the server's count
    completion_cap: int | None  # completion tokens alone


def _first(patterns: tuple[re.Pattern[str], ...], text: str) -> int | None:
    for pattern in patterns:
        if found := pattern.search(text):
            return int(found.group(1))
    return None


def _number(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def read_refusal(message: str, body: Any = None) -> ContextRefusal | None:
    """The limits a refusal states (its message, and its JSON body's fields as llama.cpp's server sends them), or
    None when it states none: the refusal is then not about the context, or says too little to act on."""
    error = body.get("error", body) if isinstance(body, dict) else None
    fields = error if isinstance(error, dict) else {}
    limit = _first(_LIMIT, message) or _number(fields.get("n_ctx"))
    prompt = _first(_PROMPT, message) or _number(fields.get("n_prompt_tokens"))
    cap = None if limit else _first(_CAP, message)
    if limit is None and cap is None:
        return None
    return ContextRefusal(limit=limit, prompt=prompt, completion_cap=cap)


class ContextTooSmall(Exception):
    """The prompt leaves the model too little room for a reply: no `max_tokens` can make it fit."""


class ContextWindow:
    """The completion tokens to ask for: `max_tokens` until a server states a smaller limit, then what fits.

    The prompt's tokens are the server's count where it gave one; otherwise the client's estimate (four characters
    a token) scaled by the largest ratio seen between the two, so a later request of another length fits too.
    Shared by every request of a backend (one lock: concurrent refusals learn the same thing)."""

    def __init__(self, max_tokens: int, least: int = MIN_REPLY_TOKENS, remedy: str = QA_REMEDY):
        self.max_tokens = max_tokens
        self.least = min(least, max_tokens)  # the smallest reply worth asking for
        self.remedy = remedy  # what a user changes when a prompt leaves less than that
        self.limit: int | None = None
        self.completion_cap: int | None = None
        self.ratio = 1.0  # the server's prompt tokens over the client's estimate, the largest seen
        self._lock = threading.Lock()

    def completion_tokens(self, prompt_estimate: int) -> int:
        """What a request whose prompt is estimated at `prompt_estimate` tokens asks for."""
        wanted = self.max_tokens
        if self.completion_cap is not None:
            wanted = min(wanted, self.completion_cap)
        if self.limit is not None:
            room = self.limit - math.ceil(prompt_estimate * self.ratio) - MARGIN_TOKENS
            wanted = min(wanted, max(room, self.least))  # too little: the server's refusal says by how much
        return wanted

    def learn(self, refusal: ContextRefusal, prompt_estimate: int, asked: int) -> tuple[int, bool]:
        """What to ask for when the refused request is sent again, and whether this refusal told the window
        something new (for a single warning). Raises ContextTooSmall when no reply fits, or when the refusal
        leaves nothing smaller to ask for than what was refused."""
        least = self.least
        with self._lock:
            new = False
            if refusal.completion_cap is not None and refusal.completion_cap != self.completion_cap:
                self.completion_cap, new = refusal.completion_cap, True
            if refusal.limit is not None and refusal.limit != self.limit:
                self.limit, new = refusal.limit, True
            if refusal.prompt is not None and prompt_estimate > 0:
                self.ratio = max(self.ratio, refusal.prompt / prompt_estimate)
        if refusal.limit is not None:
            prompt = refusal.prompt if refusal.prompt is not None else math.ceil(prompt_estimate * self.ratio)
            room = refusal.limit - prompt - (0 if refusal.prompt is not None else MARGIN_TOKENS)
            wanted = min(self.max_tokens, room, self.completion_cap or room)
            if room < least:
                raise ContextTooSmall(
                    f"the prompt takes {prompt} of the model's {refusal.limit} context tokens, leaving {max(room, 0)} "
                    f"for the reply (at least {least} needed): {self.remedy}"
                )
        else:
            wanted = min(self.max_tokens, refusal.completion_cap or self.max_tokens)
            if wanted < least:
                raise ContextTooSmall(f"the server allows {wanted} completion tokens; a reply needs at least {least}")
        if wanted >= asked:
            raise ContextTooSmall(
                f"the server refused {asked} completion tokens and states no smaller limit that fits "
                f"(limit {refusal.limit}, prompt {refusal.prompt}, completion cap {refusal.completion_cap})"
            )
        return wanted, new
