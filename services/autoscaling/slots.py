"""The GPU-slot audit: `gpu-slots` slots that the server counts and no GPU stage holds, given back.

A GPU stage holds its slot under a lease kept in the lease store (Redis, in the stack), renewed while it runs
(flows/outage.py). Prefect frees the slot of a lease that lapsed, and frees it when the stage lets it go, but only
through the lease: a lease the store lost (Redis's volume deleted, a FLUSHALL, a store swapped) is freed by nothing,
the slot stays counted in Postgres, and every later GPU stage waits for it for good: the daily schedule's
evaluation would never run again. The API lists no leases, so the audit counts the other way round: a stage takes
its slot after its flow run is Running and lets it go before the run ends, so the slots counted can never be more
than the GPU pool's runs that are Running or Cancelling. More than that at every tick for `grace` seconds are slots
that nobody holds: the fewest seen in that time are given back with the API's decrement (atomic: a stage taking a
slot meanwhile is not undone), logged as an error, and sent as a health event, which the health alert pages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llm_pipeline.logging import get_logger

log = get_logger("autoscaler")


@dataclass
class SlotAudit:
    limit: str
    pool: str
    grace_s: float
    since: float | None = None  # when the counted slots first exceeded the runs that could hold them
    fewest: int = 0  # the smallest excess seen since then: what is given back

    async def tick(self, client: Any, now: float) -> int:
        """One look; the number of slots given back (0 unless unheld slots outlasted the grace)."""
        from flows.outage import slot_reading

        reading = await slot_reading(client, self.limit, self.pool)
        if reading is None:  # not made (no `make deploy` yet): nothing counted
            self.since = None
            return 0
        counted, holders = reading["counted"], reading["holders"]
        excess = counted - holders
        if excess <= 0:
            if self.since is not None:
                log.info("gpu_slots_accounted", limit=self.limit, counted=counted, holders=holders)
            self.since = None
            return 0
        if self.since is None:
            self.since, self.fewest = now, excess
            log.warning(
                "gpu_slots_unheld",
                limit=self.limit,
                counted=counted,
                holders=holders,
                given_back_in_s=self.grace_s,
                message="more slots counted than GPU-pool runs that could hold them; given back if it lasts",
            )
            return 0
        self.fewest = min(self.fewest, excess)
        if now - self.since < self.grace_s:
            return 0
        freed, waited = self.fewest, now - self.since
        # the API wants the time held (> 0): the time unheld is the part of it known
        await client.release_concurrency_slots(names=[self.limit], slots=freed, occupancy_seconds=max(waited, 1.0))
        self.since = None
        message = (
            f"{freed} {self.limit} slot(s) counted for {waited:.0f}s with no GPU-pool run holding them, given back "
            f"(counted {counted}, runs Running or Cancelling in {self.pool}: {holders}); their leases were "
            "lost, which happens when the lease store (Redis) lost its data"
        )
        log.error("gpu_slots_given_back", limit=self.limit, slots=freed, counted=counted, holders=holders)
        self._page(message, freed, counted, holders, waited)
        return freed

    def _page(self, message: str, freed: int, counted: int, holders: int, waited: float) -> None:
        from flows.health import emit_breach

        figures = {"given_back": freed, "counted": counted, "holders": holders}
        name = f"{self.limit} (the GPU stages' concurrency limit)"
        emit_breach("gpu-slots", name, f"{waited:.0f}s", [message], figures)
