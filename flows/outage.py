"""Calls to the Prefect API that ride out its restarts.

The client's own retries give up after seconds; a restart of the stack's API (or of its database) takes longer.
Two places cannot afford to give up: a pipeline following its hand-off to a GPU-pool stage (a hand-off that gave up
failed a run whose child went on to complete), and a GPU-pool stage holding its `gpu-slots` slot. Prefect's
`concurrency()` fails the stage on the first unreachable request while it acquires ("Unable to acquire concurrency
slots", seen when the API restarted as a stage began), and its lease renewal stops after three tries, after which
the lease lapses and a second GPU stage is let onto the GPU while the first still runs. `held_slot` keeps the same
lease protocol (acquire with a lease, renew, release) through an outage.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from uuid import UUID

import httpx
from prefect import get_client
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.responses import ConcurrencyLimitWithLeaseResponse
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

from llm_pipeline.logging import get_logger

log = get_logger("flow")

# the global concurrency limit a GPU-pool stage holds a slot of (workers/pools.py creates it, sized GPU_SLOTS)
GPU_SLOTS = "gpu-slots"
GPU_POOL = "llm-pipeline-gpu-pool"  # where the GPU stages run (workers/pools.py makes it)
HOLDING = ("RUNNING", "CANCELLING")  # a GPU stage's run holds its slot only in these states
API_OUTAGE_S = 600  # how long a call rides out an unreachable API before it gives up
OUTAGE_RETRY_S = 5

T = TypeVar("T")


def is_outage(exc: BaseException) -> bool:
    """The API unreachable, failing on its side (5xx) or asking to be asked later (429), not a refusal."""
    if isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, httpx.HTTPStatusError) and (
        exc.response.status_code >= 500 or exc.response.status_code == 429
    )


def _transport_errors(cls: type[BaseException] = httpx.TransportError) -> set[str]:
    return {cls.__name__}.union(*(_transport_errors(sub) for sub in cls.__subclasses__()))


TRANSPORT_ERRORS = frozenset(_transport_errors())  # ConnectError, ReadTimeout, RemoteProtocolError, ...
_FAILED_ON = re.compile(r"encountered an exception: (\w+):")


def lost_the_api(message: str | None) -> bool:
    """A flow run's Failed message names a network error (Prefect writes "Flow run encountered an exception:
    ConnectError: ..."): seen when a stage's run asked the API for its deployment as the API restarted (a new
    Prefect client gives up on the first refused connection). The library's own clients raise TransientError
    instead, so a bare httpx class is most likely Prefect's; either way the retry table counts it transient."""
    found = _FAILED_ON.search(message or "")
    return found is not None and found.group(1) in TRANSPORT_ERRORS


@contextmanager
def own_retries(retries: int = 0) -> Iterator[None]:
    """At most `retries` of Prefect's client retries for the calls inside, in this thread: for a caller that rides
    out an outage in its own loop, or can do without its call. The client's back-off under it (2, 4, ... 32 s, a
    minute in all by default) would only hold it up: a renewal blocked that long is a lapsed lease, an artifact
    blocked that long holds back the stage's result."""
    with temporary_settings(updates={PREFECT_CLIENT_MAX_RETRIES: retries}):
        yield


def through_outage(call: Callable[[], T], what: str, outage_s: float = API_OUTAGE_S) -> T:
    """`call`, tried again every OUTAGE_RETRY_S while the API is out, for up to `outage_s`: it goes through within
    5 s of the API's return, not at the client's next back-off step (up to 32 s later)."""
    deadline = time.monotonic() + outage_s
    while True:
        try:
            with own_retries():
                return call()
        except (httpx.TransportError, httpx.HTTPStatusError) as exc:
            if not is_outage(exc) or time.monotonic() >= deadline:
                raise
            log.warning(
                "api_unreachable", action=what, error=f"{type(exc).__name__}: {exc}"[:200], retry_s=OUTAGE_RETRY_S
            )
            time.sleep(OUTAGE_RETRY_S)


@contextmanager
def held_slot(name: str, lease_s: float, outage_s: float = API_OUTAGE_S) -> Iterator[None]:
    """One slot of the global concurrency limit `name`, held while the block runs (nothing held where the limit does
    not exist: embedded mode, a stack without GPU slots). Waits as long as the slot is taken; rides out an API
    outage of up to `outage_s` while acquiring, and renews its lease through one. A lease that lapsed anyway (an
    outage longer than the lease, the lease revoked) is not fatal, the stage's work is not thrown away: the slot is
    taken back, at once if it is free, else as soon as the run that took it lets it go (logged as an error
    meanwhile: both runs are on what the limit guards)."""
    with get_client(sync_client=True) as client:
        with own_retries():
            first = _acquire(client, name, lease_s, outage_s)
        if first is None:
            yield
            return
        held = _Held(first)
        stop = threading.Event()
        keeper = threading.Thread(target=_keep, args=(name, held, lease_s, stop), name=f"{name}-lease", daemon=True)
        keeper.start()
        try:
            yield
        finally:
            stop.set()
            keeper.join()
            try:
                if held.lease is not None:
                    with own_retries():
                        client.release_concurrency_slots_with_lease(held.lease)
            except (httpx.TransportError, httpx.HTTPStatusError) as exc:
                # nothing renews it any more: it lapses within the lease, and a retry here would hold the stage's
                # result back from the pipeline for the length of the outage
                log.warning("slot_release_failed", limit=name, lapses_in_s=lease_s, error=f"{type(exc).__name__}")


class _Held:
    """The lease the slot is held under now (a slot taken back after a lapse has a new one), None while the slot
    is not held."""

    def __init__(self, lease: UUID):
        self.lease: UUID | None = lease
        self.said_taken = False  # slot_taken_while_lapsed logged for this lapse


def _increment(client: SyncPrefectClient, name: str, lease_s: float) -> ConcurrencyLimitWithLeaseResponse:
    response = client.increment_concurrency_slots_with_lease(
        names=[name], slots=1, mode="concurrency", lease_duration=lease_s
    )
    return ConcurrencyLimitWithLeaseResponse.model_validate(response.json())


def _acquire(client: SyncPrefectClient, name: str, lease_s: float, outage_s: float) -> UUID | None:
    deadline = time.monotonic() + outage_s
    waited = False
    while True:
        try:
            held = _increment(client, name, lease_s)
        except (httpx.TransportError, httpx.HTTPStatusError) as exc:
            if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == 423:
                # taken: wait as long as it takes, as Prefect's concurrency() does
                if not waited:
                    log.info("slot_waiting", limit=name)
                    waited = True
                time.sleep(float(exc.response.headers.get("Retry-After", OUTAGE_RETRY_S)))
                deadline = time.monotonic() + outage_s  # the outage budget counts from the API's last answer
                continue
            if not is_outage(exc) or time.monotonic() >= deadline:
                raise
            log.warning(
                "api_unreachable", action=f"acquire a {name} slot", error=type(exc).__name__, retry_s=OUTAGE_RETRY_S
            )
            time.sleep(OUTAGE_RETRY_S)
            continue
        if not held.limits:  # no such limit: the server made an empty lease; hand it back and hold nothing
            client.release_concurrency_slots_with_lease(held.lease_id)
            return None
        log.info("slot_acquired", limit=name, lease_s=lease_s, lease=str(held.lease_id))
        return held.lease_id


def _keep(name: str, held: _Held, lease_s: float, stop: threading.Event) -> None:
    """Renew the lease every third of its length; through an outage, every OUTAGE_RETRY_S until the API answers. A
    lease found lapsed: the slot taken back, asked for every OUTAGE_RETRY_S while another run holds it."""
    with get_client(sync_client=True) as client, own_retries():
        while not stop.wait(lease_s / 3 if held.lease is not None else OUTAGE_RETRY_S):
            if held.lease is None:
                if not _take_back(client, name, held, lease_s):
                    return
                continue
            while not stop.is_set():
                try:
                    client.renew_concurrency_lease(lease_id=held.lease, lease_duration=lease_s)
                    break
                except httpx.HTTPStatusError as exc:
                    if exc.response.status_code in (404, 410):
                        log.error("slot_lease_lapsed", limit=name, lease=str(held.lease), action="taking the slot back")
                        held.lease, held.said_taken = None, False
                        if not _take_back(client, name, held, lease_s):
                            return
                        break
                    if not is_outage(exc):
                        log.error("slot_renewal_refused", limit=name, status=exc.response.status_code)
                        return
                except httpx.TransportError:
                    pass
                log.warning("api_unreachable", action=f"renew the {name} lease", retry_s=OUTAGE_RETRY_S)
                stop.wait(OUTAGE_RETRY_S)


def _take_back(client: SyncPrefectClient, name: str, held: _Held, lease_s: float) -> bool:
    """One try at the slot a lapsed lease let go; sets `held.lease` when it is held again. False when there is
    nothing left to keep (the limit is gone, or the API refuses the request)."""
    try:
        taken = _increment(client, name, lease_s)
    except httpx.TransportError:
        return True  # the API is out: asked again at the next tick
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == 423:
            if not held.said_taken:
                held.said_taken = True
                log.error(
                    "slot_taken_while_lapsed",
                    limit=name,
                    consequence="another run holds the slot this stage held; both run on what the limit guards until "
                    f"it lets the slot go (asked for again every {OUTAGE_RETRY_S} s)",
                    or_else="if no other GPU stage runs, the lease store (Redis) lost this stage's lease: the slot "
                    "is still counted for it, and the autoscaler gives it back after its grace once the stage ends",
                )
            return True
        if is_outage(exc):
            return True
        log.error("slot_take_back_refused", limit=name, status=exc.response.status_code)
        return False
    if not taken.limits:  # the limit was deleted meanwhile: nothing to hold (the empty lease lapses if not released)
        with contextlib.suppress(httpx.TransportError, httpx.HTTPStatusError):
            client.release_concurrency_slots_with_lease(taken.lease_id)
        log.warning("slot_limit_gone", limit=name)
        return False
    held.lease = taken.lease_id
    log.warning("slot_reacquired", limit=name, lease=str(taken.lease_id))
    return True


async def slot_reading(client: Any, limit: str = GPU_SLOTS, pool: str = GPU_POOL) -> dict[str, int] | None:
    """The limit's size, its slots counted, and the runs that could hold them: `pool`'s runs Running or Cancelling
    (a GPU stage takes its slot once its run is Running and lets it go before the run ends, so `counted` over
    `holders` is slots nobody holds). None when the limit does not exist."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        WorkPoolFilter,
        WorkPoolFilterName,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.exceptions import ObjectNotFound

    try:
        found = await client.read_global_concurrency_limit_by_name(limit)
    except ObjectNotFound:
        return None
    holders = await client.count_flow_runs(
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType(s) for s in HOLDING]))
        ),
        work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])),
    )
    return {"limit": found.limit, "counted": found.active_slots, "holders": holders}
