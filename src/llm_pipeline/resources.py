"""CPU, memory and GPU use sampled while a stage runs (psutil; NVML where a GPU and its driver are present).

A background thread samples every `interval` seconds; the summary is what health checks against the 80 %
threshold: mean and peak CPU, peak memory, mean and peak GPU utilisation and peak GPU memory, as percentages.
- CPU is the whole machine's utilisation, all cores, as psutil reports it (a container's CPU quota is not
  read: inside one this is the host's load).
- Memory is the cgroup's use against its limit where the process runs under a memory limit (a container with
  `mem_limit`), else the machine's used memory; the process tree's RSS is reported beside it.
- GPU figures are over the devices NVML sees (all of them: the worker owns its GPUs).
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from statistics import mean
from typing import Any

import psutil

CGROUP = Path("/sys/fs/cgroup")


def _cgroup_memory_pct() -> float | None:
    try:
        limit = (CGROUP / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return 100.0 * int((CGROUP / "memory.current").read_text()) / int(limit)
    except (OSError, ValueError):
        return None


class _Gpus:
    """NVML handles, or none (no driver, no GPU, no pynvml): then every figure is None."""

    def __init__(self) -> None:
        self.handles: list[Any] = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception:  # NVMLError_LibraryNotFound, DriverNotLoaded, ImportError: no GPU figures
            self.handles = []

    def sample(self) -> tuple[float, float] | None:
        if not self.handles:
            return None
        utilisation, memory = [], []
        for handle in self.handles:
            utilisation.append(float(self.nvml.nvmlDeviceGetUtilizationRates(handle).gpu))
            info = self.nvml.nvmlDeviceGetMemoryInfo(handle)
            memory.append(100.0 * info.used / info.total)
        return mean(utilisation), max(memory)

    def close(self) -> None:
        if self.handles:
            with contextlib.suppress(Exception):
                self.nvml.nvmlShutdown()


class ResourceSampler:
    """`with ResourceSampler() as sampler: ...` then `sampler.summary()`."""

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self.cpu: list[float] = []
        self.memory: list[float] = []
        self.rss_mb: list[float] = []
        self.gpu_util: list[float] = []
        self.gpu_memory: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process = psutil.Process()

    def __enter__(self) -> ResourceSampler:
        self._gpus = _Gpus()
        psutil.cpu_percent(None)  # the first call only sets the reference point
        self._thread = threading.Thread(target=self._run, name="resource-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        try:
            self.cpu.append(psutil.cpu_percent(None))
            cgroup = _cgroup_memory_pct()
            self.memory.append(cgroup if cgroup is not None else psutil.virtual_memory().percent)
            rss = self._process.memory_info().rss
            for child in self._process.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    rss += child.memory_info().rss
            self.rss_mb.append(rss / 2**20)
            gpu = self._gpus.sample()
            if gpu is not None:
                self.gpu_util.append(gpu[0])
                self.gpu_memory.append(gpu[1])
        except Exception:  # a sample is a view: it never fails the stage
            pass

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sample()  # a stage shorter than the interval still gets one sample, over its whole run
        self._gpus.close()

    def summary(self) -> dict[str, float | None]:
        def mean_of(values: list[float]) -> float | None:
            return round(mean(values), 1) if values else None

        def max_of(values: list[float]) -> float | None:
            return round(max(values), 1) if values else None

        return {
            "samples": len(self.cpu),
            "cpu_mean_pct": mean_of(self.cpu),
            "cpu_max_pct": max_of(self.cpu),
            "memory_max_pct": max_of(self.memory),
            "rss_max_mb": max_of(self.rss_mb),
            "gpu_util_mean_pct": mean_of(self.gpu_util),
            "gpu_util_max_pct": max_of(self.gpu_util),
            "gpu_memory_max_pct": max_of(self.gpu_memory),
        }


def combine_usage(parts: list[tuple[dict[str, Any], float]]) -> dict[str, float | None]:
    """Figures of a whole from its parts' (usage, weight): CPU and GPU utilisation as weighted means (a run from
    its stages, weighted by their time; a deployment from its runs, weight 1 each), memory as the peak."""

    def weighted(key: str) -> float | None:
        pairs = [(u[key], w) for u, w in parts if u.get(key) is not None]
        if not pairs:
            return None
        total = sum(w for _, w in pairs)
        return round(sum(v * w for v, w in pairs) / total, 1) if total else round(mean(v for v, _ in pairs), 1)

    def peak(key: str) -> float | None:
        values = [u[key] for u, _ in parts if u.get(key) is not None]
        return max(values) if values else None

    return {
        "cpu_mean_pct": weighted("cpu_mean_pct"),
        "memory_max_pct": peak("memory_max_pct"),
        "gpu_util_mean_pct": weighted("gpu_util_mean_pct"),
        "gpu_memory_max_pct": peak("gpu_memory_max_pct"),
    }
