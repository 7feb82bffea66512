"""A Ray cluster for the length of a stage: joined at `execution.ray_address`, or started on this machine.

Failures are told in the configuration's words: a head that does not answer, or a cluster that dies under a
stage, raises `RayUnavailableError` (a TransientError: the stage retry table backs off and tries again) naming
`execution.ray_address`. A task that fails in the library's own code re-raises that error as it is (a bad input
is not made retryable by having run on Ray).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from llm_pipeline.errors import PipelineError, TransientError
from llm_pipeline.logging import get_logger

if TYPE_CHECKING:
    from llm_pipeline.config import ExecutionConfig

log = get_logger("engine")

CONNECT_TIMEOUT_S = 10.0
PROBE_TIMEOUT_S = 20.0  # the cluster's nodes asked for their disk before a stage
DISK_FULL = (
    "objects that outgrow the object store cannot be spilled: the stage fails or stalls; free disk space or set "
    "RAY_TMPDIR"
)


class RayUnavailableError(TransientError):
    """The Ray cluster cannot be reached, or failed under a stage."""


def describe(address: str) -> str:
    return address or "a Ray started on this machine for the run"


def resolve_address(execution: ExecutionConfig) -> str:
    """execution.ray_address, else RAY_ADDRESS from the environment (the compose stack sets it to its own head),
    else empty: a Ray of its own."""
    return execution.ray_address or os.environ.get("RAY_ADDRESS", "").strip()


def _disk_too_full_to_spill(folder: str | None = None) -> dict[str, Any] | None:
    """Ray's own test of the disk under its folder (free space against the whole disk, over
    `RAY_local_fs_capacity_threshold`, 0.95 by default), which it applies before spilling objects. Past it, a stage
    whose objects outgrow the object store fails with OutOfDiskError, or (seen here once, with objects already
    spilled) waits for ever; said before the stage starts. None when the disk is fine."""
    import shutil
    import tempfile

    folder = folder or os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()
    try:
        threshold = float(os.environ.get("RAY_local_fs_capacity_threshold", "0.95"))  # noqa: SIM112 (Ray's name)
        usage = shutil.disk_usage(folder)
    except (OSError, ValueError):
        return None
    full = 1 - usage.free / usage.total if usage.total else 0.0
    if full < threshold:
        return None
    return {"folder": folder, "full": round(full, 3), "threshold": threshold, "free_gb": round(usage.free / 2**30, 1)}


def _node_disk() -> dict[str, Any] | None:
    """`_disk_too_full_to_spill` as a Ray task on one node: the folder is that node's Ray folder (`ray start
    --temp-dir`, else RAY_TMPDIR or /tmp), the threshold that node's environment's."""
    try:
        import ray

        folder = ray._private.worker.global_worker.node.get_temp_dir_path()  # noqa: SLF001 (no public name for it)
    except Exception:  # noqa: BLE001 (a Ray without it: the default folder)
        folder = None
    return _disk_too_full_to_spill(folder)


def _cluster_disks_too_full(timeout_s: float = PROBE_TIMEOUT_S) -> list[dict[str, Any]]:
    """For a cluster joined at an address: the alive nodes whose disk Ray would refuse to spill to, each with its
    address. One task of no CPU pinned to each node; a node that does not answer within `timeout_s` is left out
    (the check only warns: it must not hold the stage up)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(_node_disk)
    asked = {}
    for node in ray.nodes():
        if node.get("Alive"):
            where = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
            name = f"{node.get('NodeManagerAddress', '?')} ({node['NodeID'][:8]})"
            asked[probe.options(scheduling_strategy=where).remote()] = name
    ready, late = ray.wait(list(asked), num_returns=len(asked), timeout=timeout_s)
    for ref in late:
        ray.cancel(ref, force=True)
    full = []
    for ref in ready:
        try:
            found = ray.get(ref)
        except Exception:  # noqa: BLE001 (a node that failed the probe: no verdict, no warning)
            continue
        if found is not None:
            full.append({"node": asked[ref], **found})
    return full


def _warn_of_full_disks(address: str) -> None:
    """`ray_disk_full` for each node of a joined cluster past Ray's disk test; a check that fails says so and
    holds nothing up (the stage meets the cluster's own failures in its words)."""
    try:
        full = _cluster_disks_too_full()
    except Exception as exc:  # noqa: BLE001 (a warning's check: never the reason a stage fails)
        log.warning("ray_disk_check_failed", address=address, error=f"{type(exc).__name__}: {exc}"[:200])
        return
    for disk in full:
        log.warning("ray_disk_full", **disk, consequence=DISK_FULL)


def _check_reachable(address: str) -> None:
    """The head (its GCS, host:port, or its Ray Client server, ray://host:port) must accept a connection: ray.init
    itself waits 13 minutes on one that does not answer (measured here), then prints a C++ stack."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except (OSError, ValueError) as exc:
        raise RayUnavailableError(
            f"execution.ray_address: no Ray head answers at {address} ({exc}). Start the cluster "
            "(`make up` with COMPOSE_PROFILES=ray, `ray start --head`), or set execution.ray_address to "
            "an address that answers, or empty to start a Ray on this machine."
        ) from exc


@contextmanager
def ray_session(execution: ExecutionConfig) -> Iterator[str]:
    """Connected to Ray inside the block; yields the address in words. A Ray this process already joined (a
    test's cluster, a driver script's `ray.init`) is used as it is and left running."""
    import ray

    address = resolve_address(execution)
    if ray.is_initialized():
        yield describe(address)
        return
    if address and address != "auto":
        _check_reachable(address)
    options: dict[str, Any] = {"log_to_driver": False, "namespace": "llm-pipeline"}
    if not address:
        # a Ray of our own: this machine's CPUs (or execution.ray_num_cpus), no dashboard, nothing left behind
        options.update(num_cpus=execution.ray_num_cpus, include_dashboard=False)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        disk = _disk_too_full_to_spill()
        if disk is not None:
            log.warning("ray_disk_full", **disk, consequence=DISK_FULL)
    try:
        ray.init(address=address or "local", **options)  # "local": a new Ray, never one found running
    except Exception as exc:
        raise RayUnavailableError(
            f"execution.ray_address: cannot join the Ray cluster at {describe(address)}: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        log.info("ray_connected", address=describe(address), cpus=ray.cluster_resources().get("CPU", 0))
        if address:
            _warn_of_full_disks(address)
        yield describe(address)
    finally:
        ray.shutdown()


def cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def fetch(refs: Any, address: str) -> Any:
    """`ray.get`, with the library's own errors raised as themselves and the cluster's failures (a node gone
    after Ray's retries, the head gone, an object lost with its lineage) as RayUnavailableError."""
    import ray
    from ray import exceptions as rex

    try:
        return ray.get(refs)
    except rex.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, PipelineError):
            raise cause from exc
        if isinstance(cause, BaseException) and not isinstance(cause, rex.RayError):
            raise cause from exc
        raise RayUnavailableError(f"execution.ray_address: a task failed on {describe(address)}: {exc}") from exc
    except rex.RayError as exc:
        raise RayUnavailableError(
            f"execution.ray_address: the Ray cluster at {describe(address)} failed under the stage: "
            f"{type(exc).__name__}: {str(exc)[:300]}"
        ) from exc


def fetch_each(refs: Sequence[Any], address: str) -> Iterator[Any]:
    """One object at a time, in order: a driver that streams shards holds one at once."""
    for ref in refs:
        yield fetch(ref, address)
