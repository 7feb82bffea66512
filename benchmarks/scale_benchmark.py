"""Load + MinHash dedup at scale: the local engine against Ray at 1 and 2 workers, in the same sitting.

The corpus is synthetic, written as JSONL files of --file-docs documents: each document's length in words is drawn
from the lengths of real docstrings (the installed packages'), its words from their vocabulary by their
frequencies, and --dup-rate of the documents are copies of an earlier one with 5 % of the words replaced (planted
near-duplicates). Synthetic text: these figures are about the engines' cost per document and their scaling, not
a claim about any real corpus's duplicate structure.

Each configuration runs in a fresh process (the stage through `run_stage`, as a flow runs it); Ray's are a head
with no CPU plus N worker nodes of one CPU each (`ray.cluster_utils.Cluster`: real raylets and worker processes).
Reported: wall seconds of the stage, documents per second, peak RSS of the driver and of the largest Ray process
(sampled every 0.2 s; Ray's object store is shared memory, counted where a process maps it), the shuffle volume
(band rows: documents x bands x 18 bytes), and documents removed (the same for every engine, or the run fails).

  python benchmarks/scale_benchmark.py --docs 100000 --configs local ray1 ray2
  python benchmarks/scale_benchmark.py --docs 1000000 --configs ray2 --output docs/scale-1m.json
  python benchmarks/scale_benchmark.py --docs 200000 --configs local ray2 --set dedup.method=semantic \
      dedup.embedding_backend=static dedup.semantic_search=ivf dedup.ivf_shards=4

`procs1` / `procs2` (in --configs) run the Ray load tasks' own function over every file on 1 or 2 plain processes
of one thread, no Ray, no reduce: the best a second worker can gain on this machine for the part that scales.

`--set` overrides the config as `llm-pipeline run --set` does (the dedup method: MinHash unless set). Peak memory
is given as RSS (shared pages of Ray's object store included where a process touched them) and as USS (the
process's own pages only: what the object store's copy does not explain).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
THREADS = {v: "1" for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TOKENIZERS_PARALLELISM")}


def build_corpus(folder: Path, docs: int, file_docs: int, dup_rate: float, seed: int = 7) -> dict[str, Any]:
    from collections import Counter

    from real_text_corpus import python_docstrings

    real = python_docstrings(("transformers/models", "scipy"))
    lengths = np.array([len(r["text"].split()) for r in real])
    counts = Counter(word for r in real for word in r["text"].split())
    vocab = np.array(list(counts))
    weights = np.array(list(counts.values()), dtype=np.float64)
    weights /= weights.sum()
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    planted = 0
    recent: list[list[str]] = []  # documents a copy may be drawn from (the last few thousand)
    total_bytes = 0
    for start in range(0, docs, file_docs):
        n = min(file_docs, docs - start)
        sizes = np.clip(rng.choice(lengths, size=n), 20, 3000)
        words = vocab[rng.choice(len(vocab), size=int(sizes.sum()), p=weights)]
        cuts = np.concatenate(([0], np.cumsum(sizes)))
        lines = []
        for k in range(n):
            if recent and rng.random() < dup_rate:
                text = list(recent[int(rng.integers(len(recent)))])
                for position in rng.choice(len(text), size=max(1, len(text) // 20), replace=False):
                    text[int(position)] = str(vocab[int(rng.integers(len(vocab)))])
                planted += 1
            else:
                text = words[cuts[k] : cuts[k + 1]].tolist()
            if len(recent) < 5000:
                recent.append(text)
            else:
                recent[int(rng.integers(5000))] = text
            lines.append(json.dumps({"id": f"d{start + k}", "text": " ".join(text)}))
        data = "\n".join(lines) + "\n"
        total_bytes += len(data)
        (folder / f"part-{start // file_docs:05d}.jsonl").write_text(data)
    return {"documents": docs, "files": -(-docs // file_docs), "planted_copies": planted, "bytes": total_bytes}


def child(config: str, corpus: Path, out: Path, settings: list[str]) -> None:
    """One configuration, in this fresh process; prints one JSON line."""
    from llm_pipeline.cli import parse_overrides
    from llm_pipeline.config import load_config
    from llm_pipeline.stages import run_stage, stage_named

    overrides = parse_overrides(settings)
    overrides.setdefault("dedup", {}).setdefault("method", "minhash")
    overrides.setdefault("data", {})["path"] = str(corpus)
    overrides.setdefault("execution", {})["engine"] = "local" if config == "local" else "ray"
    if config.startswith("procs"):
        cfg = load_config(ROOT / "configs" / "test.yaml", overrides)
        print(json.dumps(plain_processes(int(config.removeprefix("procs")), cfg)), flush=True)
        return
    cluster = None
    # Ray's own default object store (30 % of the memory) split over the nodes of this one host: the test
    # clusters' 150 MiB (ray.cluster_utils' default) would spill nearly every object to disk at this scale
    store = int(0.3 * psutil.virtual_memory().total)
    if config.startswith("node"):  # one node (one raylet) with N CPUs: N worker processes
        from ray.cluster_utils import Cluster

        cpus = int(config.removeprefix("node"))
        head = {"num_cpus": cpus, "include_dashboard": False, "object_store_memory": store}
        cluster = Cluster(initialize_head=True, head_node_args=head)
        cluster.wait_for_nodes()
        overrides["execution"]["ray_address"] = cluster.address
    elif config != "local":
        from ray.cluster_utils import Cluster

        nodes = int(config.removeprefix("ray"))
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        for _ in range(nodes):
            cluster.add_node(num_cpus=1, object_store_memory=store // nodes)
        cluster.wait_for_nodes()
        overrides["execution"]["ray_address"] = cluster.address
    cfg = load_config(ROOT / "configs" / "test.yaml", overrides)
    started, started_wall = time.perf_counter(), time.time()
    result = run_stage(stage_named("load-and-deduplicate-data"), cfg, out, "bench")
    seconds = time.perf_counter() - started
    from llm_pipeline.dedup.minhash import BAND_ROW, lsh_params

    shuffled = config != "local" and cfg.dedup.method in ("minhash", "hybrid")
    bands, _ = lsh_params(cfg.dedup.jaccard_threshold, cfg.dedup.num_perm, cfg.dedup.bands)
    print(json.dumps({
        "started": started_wall,
        "seconds": round(seconds, 2),
        "documents": result.counts["documents"],
        "removed": result.counts["dedup.removed"],
        "shuffle_bytes": result.counts["documents"] * bands * BAND_ROW.itemsize if shuffled else 0,
    }), flush=True)  # fmt: skip
    if cluster is not None:
        if os.environ.get("SCALE_TIMELINE"):  # ray.timeline() of the run (chrome://tracing format), for where time goes
            import ray

            ray.init(address=cluster.address, log_to_driver=False)
            ray.timeline(filename=os.environ["SCALE_TIMELINE"])
            ray.shutdown()
        cluster.shutdown()


def _warm() -> None:
    import llm_pipeline.engine.ray_dedup  # noqa: F401  (imports before the clock starts)


def _load_and_sign(unit: tuple, data: Any, index: int, signing: Any) -> float:
    """The Ray load task's own function body (`_load_file`), in a plain process; its CPU seconds."""
    from llm_pipeline.engine.ray_dedup import _load_file

    started = time.process_time()
    _load_file._function(str(unit[0]), str(unit[0]), unit[1], data, index, signing, unit[2])
    return time.process_time() - started


def plain_processes(workers: int, cfg: Any) -> dict[str, Any]:
    """The load-and-sign work of every file (what the Ray load tasks do, the larger part of a run) on `workers`
    plain processes of one thread, no Ray: how much a second worker can gain on this machine at best."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from llm_pipeline.dedup.minhash import lsh_params
    from llm_pipeline.engine.ray_dedup import Signing, _units

    dedup = cfg.dedup
    bands, rows = lsh_params(dedup.jaccard_threshold, dedup.num_perm, dedup.bands)
    signing = Signing(dedup.shingle_size, dedup.num_perm, bands, rows, workers)
    units = _units(cfg)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_warm) as pool:
        list(pool.map(time.sleep, [0.5] * workers))  # every worker started and warm
        started = time.perf_counter()
        cpu = list(pool.map(_load_and_sign, units, [cfg.data] * len(units), range(len(units)), [signing] * len(units)))
        seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "task_cpu_seconds": round(sum(cpu), 2), "units": len(units)}


def _own_pages(pid: int) -> tuple[int, int]:
    """(USS, anonymous) bytes of a process, from /proc/PID/smaps_rollup (Linux)."""
    fields: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, _, value = line.partition(":")
            fields[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return 0, 0
    return fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0), fields.get("Anonymous", 0)


def measure(config: str, corpus: Path, settings: list[str]) -> dict[str, Any]:
    env = {**os.environ, **THREADS, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, __file__, "--child", config, "--corpus", str(corpus), "--out", out]
        command += ["--set", *settings] if settings else []
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
        peaks: dict[int, tuple[str, int]] = {}
        private: dict[int, int] = {}  # USS: pages no other process maps (object-store pages it wrote included)
        heap: dict[int, int] = {}  # anonymous pages: its own memory, none of the object store's (shared memory)
        done = threading.Event()
        sampler_cpu: list[float] = []

        def sample() -> None:
            # RSS (/proc/pid/statm, cheap) every 0.2 s; USS only every 2 s: it walks every mapping of the process
            # (smaps_rollup), and the workers map the object store's GBs. At 0.2 s for both, this thread took
            # 26 s of CPU in a 112 s run on 2 cores (measured 2026-12-05), a tax on the 2-worker runs alone.
            root = psutil.Process(process.pid)
            names: dict[int, str] = {}
            tick = 0
            while not done.is_set():
                procs = [root]
                with contextlib.suppress(psutil.Error):
                    procs += root.children(recursive=True)
                for p in procs:
                    try:
                        if p.pid not in names or tick % 10 == 0:  # a Ray worker sets its title after it starts
                            cmdline = p.cmdline() or ["?"]
                            # the Ray driver runs in a process of its own (llm_pipeline.engine.driver): named so
                            names[p.pid] = "ray driver" if "llm_pipeline.engine.ray_driver" in cmdline else cmdline[0]
                        rss = p.memory_info().rss
                        if tick % 10 == 0:
                            uss, anon = _own_pages(p.pid)
                            private[p.pid] = max(private.get(p.pid, 0), uss)
                            heap[p.pid] = max(heap.get(p.pid, 0), anon)
                    except psutil.Error:
                        continue
                    peaks[p.pid] = (names[p.pid], max(rss, peaks.get(p.pid, ("", 0))[1]))  # its latest name
                tick += 1
                time.sleep(0.2)
            sampler_cpu.append(time.thread_time())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        stdout, _ = process.communicate()
        done.set()
        sampler.join()
        if process.returncode != 0:
            raise SystemExit(f"{config} failed (exit {process.returncode})")
        line = json.loads(stdout.strip().splitlines()[-1])
        stage = peaks.get(process.pid, ("", 0))[1]
        drivers = [pid for pid, (name, _) in peaks.items() if name == "ray driver"]
        # the local engine has no driver: its stage's process holds it all
        driver = max((peaks[pid][1] for pid in drivers), default=stage)
        driver_private = max((private.get(pid, 0) for pid in drivers), default=private.get(process.pid, 0))
        ray_peaks = [rss for pid, (name, rss) in peaks.items() if pid != process.pid and name.startswith("ray::")]
        ray_private = [private.get(pid, 0) for pid, (name, _) in peaks.items() if name.startswith("ray::")]
        ray_heap = [heap.get(pid, 0) for pid, (name, _) in peaks.items() if name.startswith("ray::")]
        others = [(name, rss) for pid, (name, rss) in peaks.items() if pid != process.pid and name != "ray driver"]
        largest_other = max(others, key=lambda x: x[1], default=("", 0))
        return {
            "config": config,
            **line,
            "docs_per_s": round(line["documents"] / line["seconds"]) if "documents" in line else None,
            "driver_peak_mb": round(driver / 2**20),
            "driver_peak_private_mb": round(driver_private / 2**20),
            "stage_process_peak_mb": round(stage / 2**20),
            "ray_worker_peak_mb": round(max(ray_peaks, default=0) / 2**20),
            # RSS counts the object store's shared pages a worker maps; its own pages are the per-process cost
            "ray_worker_peak_private_mb": round(max(ray_private, default=0) / 2**20),
            # USS also counts object-store pages only this worker has touched (the outputs it wrote); anonymous
            # memory is the process's own heap alone: what an out-of-memory kill would be about
            "ray_worker_peak_anon_mb": round(max(ray_heap, default=0) / 2**20),
            "driver_peak_anon_mb": round(max((heap.get(pid, 0) for pid in drivers), default=0) / 2**20),
            "largest_other_process": [largest_other[0][:40], round(largest_other[1] / 2**20)],
            "sampler_cpu_seconds": round(sampler_cpu[0], 1) if sampler_cpu else None,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--file-docs", type=int, default=20_000)
    parser.add_argument("--dup-rate", type=float, default=0.05)
    parser.add_argument("--configs", nargs="*", default=["local", "ray1", "ray2"])
    parser.add_argument("--output", type=Path)
    parser.add_argument("--keep-corpus", type=Path, help="build the corpus here (or reuse the one already there)")
    parser.add_argument("--child")
    parser.add_argument("--corpus", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.corpus, args.out, args.set)
        return
    with tempfile.TemporaryDirectory(prefix="scale-corpus-") as tmp:
        if args.keep_corpus:
            tmp = str(args.keep_corpus)
        started = time.perf_counter()
        if args.keep_corpus and args.keep_corpus.with_suffix(".json").exists():
            corpus = json.loads(args.keep_corpus.with_suffix(".json").read_text())
        else:
            corpus = build_corpus(Path(tmp), args.docs, args.file_docs, args.dup_rate)
            corpus["build_seconds"] = round(time.perf_counter() - started, 1)
            Path(tmp).with_suffix(".json").write_text(json.dumps(corpus))
        print(json.dumps({"corpus": corpus}), flush=True)
        results = []
        for config in args.configs:
            results.append(measure(config, Path(tmp), args.set))
            print(json.dumps(results[-1]), flush=True)
    removed = {r["removed"] for r in results if "removed" in r}
    if len(removed) > 1:
        raise SystemExit(f"the engines disagree on what to remove: {removed}")
    by = {r["config"]: r for r in results}
    summary: dict[str, Any] = {"corpus": corpus, "settings": args.set, "results": results, "cpus": os.cpu_count(),
                               "load_avg_at_end": os.getloadavg()}  # fmt: skip
    if "ray1" in by and "ray2" in by:
        summary["ray2_over_ray1"] = round(by["ray1"]["seconds"] / by["ray2"]["seconds"], 2)
    if "node1" in by and "node2" in by:
        summary["node2_over_node1"] = round(by["node1"]["seconds"] / by["node2"]["seconds"], 2)
    if "procs1" in by and "procs2" in by:  # the machine's own ceiling for a second worker, same work
        summary["procs2_over_procs1"] = round(by["procs1"]["seconds"] / by["procs2"]["seconds"], 2)
    if "local" in by and "ray2" in by:
        summary["ray2_over_local"] = round(by["local"]["seconds"] / by["ray2"]["seconds"], 2)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("results", "corpus")}))
    if args.output:
        args.output.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
