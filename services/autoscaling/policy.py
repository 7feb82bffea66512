"""How many workers a pool should have: the spec's rule (scale up above 80 % utilization, down below 20 %, within
1 to 10 workers, no sooner than 5 minutes after the last change to go up or 10 minutes to go down), as a pure
function of what was observed, the policy and the autoscaler's own memory. No clock, no I/O: the service feeds it
one observation per tick, and the tests feed it timelines.

- Utilization is demand (flow runs Running, Pending, and ready to start) over capacity (workers x the runs each
  takes at once, `worker_limit`). No workers and some demand is utilization infinity.
- A threshold must be crossed for `sustain_s` on end ("stays above") before it counts: one reading over the line,
  a burst that is gone by the next tick, moves nothing.
- Up: to the fewest workers that bring utilization to the up-threshold or under (at least one more), at most
  `max_workers`. Down: to the fewest workers that keep utilization at or under the up-threshold (so the next tick
  does not scale straight back up), at least `min_workers`. Each change resets both cooldowns' clock.
- Outside the bounds (a fresh stack with no worker, a bound changed by hand) the count is brought inside at once:
  bounds are not a scaling decision; they wait for no cooldown and start none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class ScalingPolicy:
    min_workers: int = 1
    max_workers: int = 10
    scale_up_threshold: float = 0.8
    scale_down_threshold: float = 0.2
    scale_up_cooldown_s: float = 300.0
    scale_down_cooldown_s: float = 600.0
    worker_limit: int = 4  # flow runs one worker takes at once
    sustain_s: float = 10.0  # how long a threshold must stay crossed before it counts

    def __post_init__(self) -> None:
        if not 0 <= self.min_workers <= self.max_workers:
            raise ValueError(f"min_workers {self.min_workers} must be 0..max_workers {self.max_workers}")
        if not 0 <= self.scale_down_threshold < self.scale_up_threshold:
            raise ValueError(
                f"scale_down_threshold {self.scale_down_threshold} must be under scale_up_threshold "
                f"{self.scale_up_threshold}"
            )
        if self.worker_limit < 1:
            raise ValueError(f"worker_limit {self.worker_limit} must be at least 1")
        if min(self.scale_up_cooldown_s, self.scale_down_cooldown_s, self.sustain_s) < 0:
            raise ValueError("cooldowns and sustain must not be negative")


@dataclass(frozen=True)
class Observation:
    at: float  # seconds, any monotonic origin
    demand: int  # runs Running + Pending + ready to start
    workers: int  # replicas now


@dataclass(frozen=True)
class ScalingState:
    last_change_at: float | None = None  # when this autoscaler last changed the count
    above_since: float | None = None  # utilization has been over the up-threshold since
    below_since: float | None = None  # under the down-threshold since


@dataclass(frozen=True)
class Decision:
    workers_from: int
    workers_to: int
    utilization: float
    reason: str  # "utilization 1.5 > 0.8", "under min_workers 1"

    @property
    def direction(self) -> str:
        return "up" if self.workers_to > self.workers_from else "down"


def utilization(demand: int, workers: int, worker_limit: int) -> float:
    if workers <= 0:
        return math.inf if demand > 0 else 0.0
    return demand / (workers * worker_limit)


def _enough_workers(demand: int, policy: ScalingPolicy) -> int:
    """The fewest workers that hold `demand` at or under the up-threshold."""
    return math.ceil(demand / (policy.worker_limit * policy.scale_up_threshold)) if demand > 0 else 0


def decide(policy: ScalingPolicy, state: ScalingState, seen: Observation) -> tuple[Decision | None, ScalingState]:
    """The change to make now, if any, and the state to pass to the next call."""
    level = utilization(seen.demand, seen.workers, policy.worker_limit)
    above = level > policy.scale_up_threshold
    below = level < policy.scale_down_threshold
    state = replace(
        state,
        above_since=(state.above_since if state.above_since is not None else seen.at) if above else None,
        below_since=(state.below_since if state.below_since is not None else seen.at) if below else None,
    )
    shown = "inf" if math.isinf(level) else f"{level:.2f}"
    if seen.workers < policy.min_workers or seen.workers > policy.max_workers:
        target = min(max(seen.workers, policy.min_workers), policy.max_workers)
        bound = "min_workers" if seen.workers < policy.min_workers else "max_workers"
        reason = f"{'under' if bound == 'min_workers' else 'over'} {bound} {getattr(policy, bound)}"
        return _change(seen, target, level, reason, replace(state, above_since=None, below_since=None), bound=True)
    since_change = math.inf if state.last_change_at is None else seen.at - state.last_change_at
    if above and seen.at - state.above_since >= policy.sustain_s and since_change >= policy.scale_up_cooldown_s:
        target = min(policy.max_workers, max(seen.workers + 1, _enough_workers(seen.demand, policy)))
        if target > seen.workers:
            return _change(seen, target, level, f"utilization {shown} > {policy.scale_up_threshold}", state)
    if below and seen.at - state.below_since >= policy.sustain_s and since_change >= policy.scale_down_cooldown_s:
        target = max(policy.min_workers, _enough_workers(seen.demand, policy))
        if target < seen.workers:
            return _change(seen, target, level, f"utilization {shown} < {policy.scale_down_threshold}", state)
    return None, state


def _change(
    seen: Observation, target: int, level: float, reason: str, state: ScalingState, bound: bool = False
) -> tuple[Decision, ScalingState]:
    """A bound's correction leaves the cooldowns' clock alone: a fresh stack brought to its one worker must not
    then wait five minutes to meet a queue that is already there."""
    decision = Decision(workers_from=seen.workers, workers_to=target, utilization=level, reason=reason)
    return decision, state if bound else ScalingState(last_change_at=seen.at)
