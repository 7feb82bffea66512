"""One adaptive rate for every request a backend has in flight: the client slows as a whole when the server says
so, and speeds up again when it allows.

- Requests start no closer than 1/rate apart (rate starts at `qa.requests_per_minute`, its ceiling; with no limit
  configured the concurrency alone bounds it until a server objects). No start is booked ahead: a waiting
  request looks at the rate again at least every quarter second, so a rate that rose applies to the requests
  already waiting (booked at a low rate, 16 waiters at one request in 20 s held the last one for 5 minutes).
- The server's `x-ratelimit-limit-requests` (per minute, as OpenAI and most gateways send it) caps the rate at
  what it allows. `x-ratelimit-remaining-requests` at 0 pauses every request for one request's spacing, at most
  until `x-ratelimit-reset-requests` ("1s", "6m0s", "250ms": when the bucket is full again), but only while the
  client is faster than the advertised limit: paced at or under it, each spacing refills the token the next
  request takes, and pausing on "0 left" as well (measured) loses up to 30 % of a 120/min limit for nothing.
- A 429 that says requests remain (`x-ratelimit-remaining-requests` >= 1) is about something else (tokens, an
  overloaded shard): only its own request waits, by the policy table. Any other 429 pauses every request for
  its Retry-After and cuts the rate: halved, or a tenth off where the server advertised its limit; once per
  burst (two requests' spacing, a second at most), not once per request in flight that drew it, and not again
  until a request sent after the last cut has got through. A server that refuses everything (an overload, a gateway's
  storm) says nothing about the client's pace: its Retry-After pauses every request and each request's backoff
  spaces its own retries, while cutting the rate at each pause would leave the client at the floor when it ends
  (measured, `make bench-qa`: a 10 s storm of 429s cut 500/min to 3/min; 172 of 450 documents answered in 240 s,
  all 450 in 66 s now).
- Each success adds back 2 % of the ceiling (additive increase), up to the ceiling, the server's limit and 95 %
  of the rate at the last 429 (which itself creeps up 0.1 % a success, to find a limit that was raised, and is
  dropped after 30 s without a 429: a server degraded for a while, answering some requests, cuts the rate
  several times, and its cap would otherwise hold the client at that low rate long after it recovered).
- The first request goes alone: its reply's headers usually tell the limit before a burst can draw 429s. With no
  limit configured, a 429 before two requests have started cuts nothing (there is no pace to cut, and a guessed
  1/s, halved, held an unbounded client to one request in flight): it pauses every request for its Retry-After.

The request that drew the 429 is retried by the policy table (llm_pipeline.qa.policy) as before; this only
decides when any request may start.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping

from llm_pipeline.logging import get_logger

log = get_logger("qa.rate")

HEADROOM = 1.0  # of the server's advertised limit
MIN_RATE = 0.05  # requests/s: one every 20 s at worst
FORGET_S = 30.0  # seconds without a 429 after which the cap it set is dropped (the rate then climbs again)
RECHECK_S = 0.25  # a waiting request looks at the rate again at least this often
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_reset(value: str | None) -> float | None:
    """OpenAI's reset format ("1s", "6m0s", "20ms", "1h2m3.5s") or plain seconds, in seconds."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    if not parts:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(number) * scale[unit] for number, unit in parts)


def _number(headers: Mapping[str, str], name: str) -> float | None:
    try:
        return float(headers[name])
    except (KeyError, TypeError, ValueError):
        return None


class RateController:
    def __init__(self, requests_per_minute: float | None):
        self.ceiling = requests_per_minute / 60 if requests_per_minute else None  # requests/s; None: unbounded
        self.rate: float | None = self.ceiling
        self.server_limit: float | None = None
        self._last = -1e9  # monotonic time the last request started (on the spacing's grid)
        self._paused_until = 0.0
        self._last_decrease = -1e9
        self._recent: list[float] = []  # start times in the last few seconds: the rate actually achieved
        self._turn = asyncio.Lock()
        self.learned: float | None = None  # just under the rate of the last 429: not exceeded, then probed slowly
        self._answered = asyncio.Event()  # a first reply (or failure) has come back: its headers may say the limit
        self._through_since_cut = True  # a request sent after the last cut succeeded (a 429 may cut again)
        self._probing = False

    async def acquire(self) -> float:
        """Wait until this request may start, and say when it did (for `succeeded`). The very first request goes
        alone (a slow start): its reply's headers usually say the server's limit before a burst at the configured
        rate can draw 429s."""
        if not self._answered.is_set():
            if self._probing:
                await self._answered.wait()
            else:
                self._probing = True
        came = time.monotonic()
        async with self._turn:  # one waiter at a time watches the clock, in the order they came (asyncio's lock)
            while True:
                now = time.monotonic()
                spacing = 1 / self.rate if self.rate else 0.0
                ready = max(self._last + spacing, self._paused_until)
                if now >= ready:
                    # on the spacing's grid if it was waiting when its place came (a late wake-up or a busy loop is
                    # caught up, as a booked place was: no drift at 100/s); a request after an idle spell: from now
                    self._last = ready if came <= ready else now
                    self._recent = [t for t in self._recent if t > now - 5] + [self._last]
                    return now
                # no start is booked ahead: the clock's watcher looks again at least every RECHECK_S, so a rate
                # that rose (or a pause that a 429 set) applies to the requests already waiting
                await asyncio.sleep(min(ready - now, RECHECK_S))

    def _achieved(self) -> float | None:
        """The pace of the last few seconds' starts (None: fewer than two, nothing measured)."""
        if len(self._recent) < 2:
            return None
        return max(MIN_RATE, len(self._recent) / max(1e-3, self._recent[-1] - self._recent[0]))

    def returned(self) -> None:
        """A request came back, however (a reply, an error, a timeout): the slow start is over."""
        self._answered.set()

    def observe(self, headers: Mapping[str, str] | None) -> None:
        """A reply's rate-limit headers, whatever its status."""
        if not headers:
            return
        limit = _number(headers, "x-ratelimit-limit-requests")
        if limit:
            self.server_limit = limit / 60 * HEADROOM
            if self.rate is None or self.rate > self.server_limit:
                self.rate = self.server_limit
        remaining = _number(headers, "x-ratelimit-remaining-requests")
        reset = parse_reset(headers.get("x-ratelimit-reset-requests"))
        paced = self.rate is not None and self.server_limit is not None and self.rate <= self.server_limit
        if remaining is not None and remaining < 1 and reset and not paced:
            # the reset is when the whole bucket is full again: one request's worth of it is enough to go on
            wait = min(reset, 1 / self.rate) if self.rate else reset
            self._paused_until = max(self._paused_until, time.monotonic() + wait)

    def succeeded(self, started: float) -> None:
        """A reply came back whole (its headers were observed already) to the request that started at `started`
        (`acquire`'s time): add a little of the rate back."""
        if started >= self._last_decrease:
            self._through_since_cut = True  # (one sent before the cut, at the old pace, says nothing of the new)
        if self.rate is None:
            return
        top = min(x for x in (self.ceiling, self.server_limit, self.learned, float("inf")) if x is not None)
        step = (self.ceiling or self.server_limit or self.rate) * 0.02
        self.rate = min(top, self.rate + step)
        if self.learned is not None:
            if time.monotonic() - self._last_decrease > FORGET_S:
                self.learned = None  # no 429 for a while: the cut's cause (a degraded server, its limit) may be gone
            else:
                self.learned *= 1.001  # probe upwards slowly: the server may allow more later

    def rate_limited(self, retry_after: float | None, headers: Mapping[str, str] | None = None) -> None:
        self.observe(headers)
        remaining = _number(headers or {}, "x-ratelimit-remaining-requests")
        if self.server_limit is not None and remaining is not None and remaining >= 1:
            return  # requests to spare: this 429 is about something else (tokens, one overloaded shard), not our pace
        now = time.monotonic()
        if retry_after:
            self._paused_until = max(self._paused_until, now + retry_after)
        current = self.rate if self.rate is not None else self._achieved()
        if current is None:
            return  # no limit and no pace measured yet (the first request's 429): the pause is all it can say
        if now - self._last_decrease < min(1.0, max(0.1, 2 / current)):
            return  # the same burst (about two requests' spacing): its other 429s do not cut the rate again
        if not self._through_since_cut:
            return  # nothing got through since the last cut: the server refuses all, whatever the pace (a storm)
        self._through_since_cut = False
        self._last_decrease = now
        self.learned = min(self.learned or float("inf"), current * 0.95)
        # halved when the server's limit is unknown; a tenth off when it advertised one (the 429 is jitter then)
        self.rate = max(MIN_RATE, current * (0.9 if self.server_limit else 0.5))
        log.warning("qa_rate_decreased", requests_per_minute=round(self.rate * 60, 1), retry_after_s=retry_after)
