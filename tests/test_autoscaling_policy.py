"""The autoscaler's policy (issue 17, must-have 6a) as a pure function over timelines of demand, workers and clock:
thresholds, bounds, both cooldowns, and no flapping on a burst. And its settings, read as the service reads them."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.autoscaling.policy import Observation, ScalingPolicy, ScalingState, decide, utilization
from services.autoscaling.settings import AutoscalerSettings, load_settings, parse_duration

SPEC = ScalingPolicy()  # the spec's numbers: 1..10, 0.8 / 0.2, 5 min / 10 min; 4 runs a worker; 10 s sustain


def run(policy: ScalingPolicy, demand_at, until: float, workers: int = 0, tick: float = 5.0):  # type: ignore[no-untyped-def]
    """Tick every `tick` seconds; the workers follow each decision at once (as the service's scaling does).
    Returns [(time, from, to, reason)]."""
    state, changes, now = ScalingState(), [], 0.0
    while now <= until:
        decision, state = decide(policy, state, Observation(at=now, demand=demand_at(now), workers=workers))
        if decision:
            changes.append((now, decision.workers_from, decision.workers_to, decision.reason))
            workers = decision.workers_to
        now += tick
    return changes


def test_the_specs_rule_over_a_day_of_work() -> None:
    def demand(t: float) -> int:
        if t < 20:
            return 0
        if t < 60:
            return 12  # 12 runs: 3 workers' worth at 4 each, 4 workers at 80 %
        if t < 400:
            return 40
        if 1000 <= t < 1005:
            return 30  # a burst that lasts one tick
        return 0

    assert run(SPEC, demand, until=1500) == [
        (0.0, 0, 1, "under min_workers 1"),  # a fresh stack: bounds first, no cooldown started
        (30.0, 1, 4, "utilization 3.00 > 0.8"),  # over the line since 20 s, sustained 10 s: enough for 80 %
        (
            330.0,
            4,
            10,
            "utilization 2.50 > 0.8",
        ),  # 40 runs want 13: 5 min up cooldown, then max
        (930.0, 10, 1, "utilization 0.00 < 0.2"),  # idle since 400 s: the 10 min down cooldown after 330 s
    ]  # the burst at 1000 s moved nothing


def test_no_flapping_on_a_burst_inside_a_cooldown() -> None:
    policy = ScalingPolicy(scale_up_cooldown_s=60, scale_down_cooldown_s=120, sustain_s=0)

    def demand(t: float) -> int:
        return 16 if t < 30 or 50 <= t < 70 or t >= 200 else 0  # work, a lull, a burst, a long lull, work

    assert [(t, a, b) for t, a, b, _ in run(policy, demand, until=260, workers=1)] == [
        (0.0, 1, 5),  # 16 runs: 5 workers hold them at 80 %
        # the lull at 30-50 s and the burst at 50-70 s fall inside the 120 s down cooldown: nothing moves
        (120.0, 5, 1),  # the long lull: down once the cooldown since 0 s is over
        (200.0, 1, 5),  # work again: up at once (80 s since the last change, over the 60 s up cooldown)
    ]


def test_down_waits_for_its_own_cooldown_and_up_for_its_own() -> None:
    policy = ScalingPolicy(scale_up_cooldown_s=60, scale_down_cooldown_s=120, sustain_s=0)
    assert [(t, a, b) for t, a, b, _ in run(policy, lambda t: 16, until=300, workers=1)] == [(0.0, 1, 5)]
    # 5 workers for 16 runs is 80 %: neither over 0.8 nor under 0.2, so nothing more moves

    def wave(t: float) -> int:
        return 16 if t < 10 else (0 if t < 100 else 40)

    # idle from 10 s, but the down cooldown (120 s from the change at 0 s) outlasts the lull; 40 runs at 100 s:
    # the up cooldown (60 s) is over, so up at once, to the most allowed (40 runs want 13)
    assert [(t, a, b) for t, a, b, _ in run(policy, wave, until=400, workers=1)] == [(0.0, 1, 5), (100.0, 5, 10)]


@settings(max_examples=200, deadline=None)
@given(
    demands=st.lists(st.integers(0, 60), min_size=5, max_size=120),
    start=st.integers(0, 15),
    up=st.floats(0, 120),
    down=st.floats(0, 240),
)
def test_any_timeline_stays_in_bounds_and_respects_both_cooldowns(
    demands: list[int], start: int, up: float, down: float
) -> None:
    policy = ScalingPolicy(min_workers=1, max_workers=8, scale_up_cooldown_s=up, scale_down_cooldown_s=down)
    changes = run(policy, lambda t: demands[int(t // 5) % len(demands)], until=5 * (len(demands) - 1), workers=start)
    workers = start
    last = None
    for t, before, after, reason in changes:
        assert before == workers
        workers = after
        assert policy.min_workers <= after <= policy.max_workers
        if reason.startswith("utilization"):
            if last is not None:
                assert t - last >= (up if after > before else down)
            last = t
            level = float(reason.split()[1])
            assert (level > 0.8) if after > before else (level < 0.2)


def test_utilization_with_no_workers() -> None:
    assert utilization(3, 0, 4) == math.inf and utilization(0, 0, 4) == 0.0 and utilization(6, 2, 4) == 0.75


def test_settings_read_the_specs_keys_and_name_a_bad_one(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "SCALING_MIN_WORKERS": "1", "SCALING_MAX_WORKERS": "3", "SCALING_SCALE_UP_THRESHOLD": "0.8",
        "SCALING_SCALE_DOWN_THRESHOLD": "0.2", "SCALING_SCALE_UP_COOLDOWN": "30s",
        "SCALING_SCALE_DOWN_COOLDOWN": "1m30s", "WORKER_LIMIT": "1",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    policy = load_settings().policy()
    assert (policy.max_workers, policy.worker_limit) == (3, 1)
    assert (policy.scale_up_cooldown_s, policy.scale_down_cooldown_s) == (30.0, 90.0)
    monkeypatch.setenv("SCALING_SCALE_DOWN_COOLDOWN", "ten minutes")
    with pytest.raises(SystemExit, match="SCALING_SCALE_DOWN_COOLDOWN: .*'ten minutes' is not a duration"):
        load_settings()
    monkeypatch.setenv("SCALING_SCALE_DOWN_COOLDOWN", "10 minutes")
    monkeypatch.setenv("SCALING_SCALE_DOWN_THRESHOLD", "0.9")
    with pytest.raises(SystemExit, match="SCALING_SCALE_DOWN_THRESHOLD 0.9 must be under"):
        load_settings()
    assert AutoscalerSettings.model_fields["scale_up_cooldown"].default == 300.0


@pytest.mark.parametrize(("text", "seconds"), [("5m", 300), ("30s", 30), ("1h30m", 5400), ("10 minutes", 600),
                                               ("250ms", 0.25), ("12", 12), ("2.5m", 150)])  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
