"""How many requests a backend keeps in flight: `qa.concurrency` at most, fewer while the server cannot keep up.

A server that answers one request at a time (llama.cpp's and llama-cpp-python's servers, Ollama by default, a
single GPU behind vLLM at its batch limit) queues the rest; with 16 in flight and a 20 s deadline, a 5 s reply
leaves the last ones in the queue past their deadline, they are sent again while the server still works on the
abandoned copies, and the stage fails with every try spent (seen: 16 of 23 requests on llama-cpp-python's server,
three stage attempts, 8 minutes). Halving the limit is not enough: the abandoned copies are still queued at the
server, so a second wave of 8 times out behind them and adds 8 more (measured with a serial fake server:
halving saved 12 of 16 requests, this saves all). So, as TCP after a retransmission timeout:

- requests that get no complete reply within `qa.request_timeout_s` set the limit to 1 and remember half of
  what it was as the threshold, when they are at least 2 and a quarter of the last 2 x `qa.concurrency` outcomes
  of requests sent since the last cut (so the 16 that timed out together cut once, and a lone request that hangs
  among hundreds answered, as any provider has now and then, cuts nothing): one request at a time probes the
  server until the backlog has drained, and a probe that times out adds one request's work to it, not a wave's;
- each success adds one slot below the threshold (slow start: the limit doubles per round of replies) and 1/limit
  above it, up to `qa.concurrency`.

A slot is held from before a request is sent until its caller has settled the outcome, as the fixed semaphore
held it (qa/openai_backend.py): at most `limit` answers can be lost to a kill. The lowest limit reached is kept
for the accounting and the report.
"""

from __future__ import annotations

import asyncio
from collections import deque

from llm_pipeline.logging import get_logger

log = get_logger("qa.inflight")

OVERLOADED_SHARE = 0.25  # of the recent outcomes timed out: the server is behind, not one request slow


class InFlightLimit:
    def __init__(self, ceiling: int):
        self.ceiling = ceiling
        self.limit = float(ceiling)
        self.threshold = float(ceiling)  # slow start below it, one slot per limit's worth of successes above
        self.lowest = ceiling
        self.in_flight = 0
        self.round = 0  # bumped by each cut; a request remembers the round it was sent in
        self.cuts = 0
        self.recent: deque[bool] = deque(maxlen=2 * ceiling)  # timed out?, for requests sent in this round
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def slots(self) -> int:
        return max(1, int(self.limit))

    async def acquire(self) -> int:
        """Wait for a slot (first come, first served); the round it was granted in."""
        if not self._waiters and self.in_flight < self.slots:
            self.in_flight += 1
            return self.round
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(granted)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():  # granted, then cancelled before it could run
                self.release()
            raise
        finally:
            if granted in self._waiters:
                self._waiters.remove(granted)
        return self.round

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.slots:
            granted = self._waiters.popleft()
            if not granted.done():
                self.in_flight += 1
                granted.set_result(None)

    def timed_out(self, sent_in_round: int, deadline_s: float) -> None:
        """A request sent in `sent_in_round` found no complete reply within its deadline."""
        if sent_in_round != self.round:
            return
        self.recent.append(True)
        late = sum(self.recent)
        if late < 2 or late < OVERLOADED_SHARE * len(self.recent):
            return
        self.recent.clear()
        self.threshold = max(1.0, self.limit / 2)
        self.limit = 1.0
        self.round += 1
        self.cuts += 1
        self.lowest = min(self.lowest, self.slots)
        log.warning(
            "qa_concurrency_reduced",
            now=self.slots,
            ceiling=self.ceiling,
            threshold=int(self.threshold),
            why=f"a request found no complete reply within {deadline_s:g} s: the server is not keeping up",
        )

    def succeeded(self, sent_in_round: int) -> None:
        if sent_in_round == self.round:
            self.recent.append(False)
        if self.limit < self.ceiling:
            step = 1.0 if self.limit < self.threshold else 1 / self.limit
            self.limit = min(float(self.ceiling), self.limit + step)
            self._wake()
