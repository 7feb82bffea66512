"""`execution.engine: ray` against the local engine, on a real Ray cluster of two worker nodes started here (a head
with no CPU, two nodes of one CPU each: every task runs on a worker node, as on a cluster).

The same inputs through both engines give the same files (compared as sets of lines, order aside), on a folder of
every kind of file with cross-file copies and repeated ids, and on real text (the docstrings the installed
packages ship, which copy each other a lot); the whole pipeline gives the same documents, QA pairs, benchmark and
scores; a worker process killed by SIGKILL in the middle of the MinHash map, an embedding call or the ivf search
leaves the result unchanged (Ray retries the task); a head that does not answer fails the stage at once with the
address in the message, as an error the stage retry table retries.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray", reason="ray is a locked dependency: `make install` installs it")

from llm_pipeline.config import load_config  # noqa: E402
from llm_pipeline.stages import run_stage, stage_named  # noqa: E402
from tests.test_dedup import catalogue_folder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "test.yaml"
STAGE = "load-and-deduplicate-data"
FILES = ("documents.jsonl", "duplicate_clusters.jsonl", "rejects.jsonl")
sys.path.insert(0, str(ROOT / "benchmarks"))

pytestmark = pytest.mark.slow


# The cluster lives in a process of its own: a Ray node object in the test process would leave its SIGTERM handler
# in every process the local engine forks (its signature pool), and a pool worker terminated at the end then
# waits forever for the node to drain (seen: a hung test session).
CLUSTER = """
import sys
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
for _ in range(int(sys.argv[1])):
    cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
print(cluster.address, flush=True)
sys.stdin.read()  # until the test closes it
cluster.shutdown()
"""


@contextlib.contextmanager
def cluster_process(workers: int = 2) -> Iterator[str]:
    """A head with no CPU and `workers` nodes of one CPU (real raylets and worker processes); yields its address."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    process = subprocess.Popen(
        [sys.executable, "-c", CLUSTER, str(workers)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        address = process.stdout.readline().strip()
        assert address, "the Ray cluster did not start"
        yield address
    finally:
        with contextlib.suppress(Exception):
            process.stdin.close()
            process.wait(timeout=30)
        if process.poll() is None:
            process.kill()


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    with cluster_process() as address:
        yield address


def _stage(tmp: Path, overrides: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    config = load_config(CONFIG, overrides)
    result = run_stage(stage_named(STAGE), config, tmp, tmp.name)
    return tmp, {k: v for k, v in result.counts.items() if k != "seconds"}


def _same_outputs(local: Path, distributed: Path) -> None:
    for name in FILES:
        a = sorted((local / name).read_text().splitlines())
        b = sorted((distributed / name).read_text().splitlines())
        assert a == b, f"{name} differs: {len(a)} lines local, {len(b)} on ray"
    assert json.loads((local / "cluster_examples.json").read_text()) == json.loads(
        (distributed / "cluster_examples.json").read_text()
    )


def _mixed_folder(root: Path) -> Path:
    """The sample corpus over JSONL, gzipped JSONL, CSV, Markdown, text, notebook, ODS and EPUB files, with copies
    across files (exact and edited), an id repeated in another file, the sample's own bad records, and a product
    catalogue (tests/test_dedup.py) whose sheets semantic dedup keeps apart by their numbers."""
    lines = (ROOT / "data/ev_charging/documents.jsonl").read_bytes().splitlines(keepends=True)
    folder = root / "corpus"
    (folder / "pricing").mkdir(parents=True)
    third = len(lines) // 3
    (folder / "a.jsonl").write_bytes(b"".join(lines[:third]))
    (folder / "pricing" / "b.jsonl.gz").write_bytes(gzip.compress(b"".join(lines[third : 2 * third])))
    good = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("text"), str) and record.get("id"):
            good.append(record)
    with (folder / "c.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text", "metadata"])
        for r in good[2 * third :]:
            writer.writerow([r["id"], r["text"], json.dumps(r.get("metadata") or {})])
        writer.writerow([good[0]["id"], "An id that a.jsonl already used, with other text in it.", "{}"])
        for r in good[:15]:  # copies of a.jsonl's documents under new ids: exact, and with a word changed
            writer.writerow([f"{r['id']}-copy", r["text"], "{}"])
            words = r["text"].split()
            words[len(words) // 2] = "altered"
            writer.writerow([f"{r['id']}-edit", " ".join(words), json.dumps({"source": "edited"})])
    (folder / "notes.md").write_text("# Charging at home\n\n" + good[3]["text"] + "\n")
    (folder / "notes.txt").write_text(good[5]["text"] + "\n")  # its id would be notes.md's: each keeps its suffix
    manual = "\n\n".join(r["text"] for r in reversed(good))  # over max_chars: loaded in parts
    assert len(manual) > 2 * 50_000
    (folder / "manual.md").write_text("# Every sheet, in one manual\n\n" + manual + "\n")
    (folder / "pricing" / "readme.txt").write_text(good[4]["text"].upper() + "\n")
    _office_files(folder, good[6:10])
    catalogue_folder(folder)  # product sheets apart only by their numbers, and a reworded copy of one
    return folder


def _office_files(folder: Path, records: list[dict[str, Any]]) -> None:
    """A notebook, a LibreOffice spreadsheet and an e-book holding the sample's texts: `guide`, `handbook` and the
    spreadsheet's rows `<id>-ods`."""
    from odfdo import Document, Table

    from tests.test_ingest_formats import write_epub

    cells = [{"cell_type": "markdown", "metadata": {}, "source": f"# Guide\n\n{records[0]['text']}"}]
    (folder / "guide.ipynb").write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4}))
    sheet = Document("spreadsheet")
    sheet.body.clear()
    table = Table("FAQ", width=2, height=3)
    table.set_row_values(0, ["id", "text"])
    for row, record in enumerate(records[1:3], start=1):
        table.set_row_values(row, [f"{record['id']}-ods", record["text"]])
    sheet.body.append(table)
    sheet.save(str(folder / "faq.ods"))
    write_epub(folder / "handbook.epub", "Handbook", [f"<p>{records[3]['text']}</p>"])


@pytest.mark.parametrize(
    ("method", "keep", "extra"),
    [
        ("minhash", "first", {}),
        ("hybrid", "longest", {"embedding_backend": "static"}),
        ("exact", "richest_metadata", {}),
    ],
)
def test_ray_gives_the_local_outputs_on_a_folder_of_every_kind(
    ray_cluster, tmp_path: Path, method: str, keep: str, extra: dict[str, Any]
) -> None:
    folder = _mixed_folder(tmp_path)
    base = {"data": {"path": str(folder)}, "dedup": {"method": method, "keep": keep, **extra}}
    local, local_counts = _stage(tmp_path / "local", base)
    on_ray = {**base, "execution": {"engine": "ray", "ray_address": ray_cluster, "shuffle_partitions": 3}}
    distributed, ray_counts = _stage(tmp_path / "ray", on_ray)
    _same_outputs(local, distributed)
    assert local_counts == ray_counts
    assert local_counts["rejected.duplicate_id"] >= 1 and local_counts["files.loaded"] == 12
    kept = {json.loads(line)["id"] for line in (local / "documents.jsonl").read_text().splitlines()}
    clusters = [json.loads(line) for line in (local / "duplicate_clusters.jsonl").read_text().splitlines()]
    loaded = kept.union(*(c["members"] for c in clusters))  # kept, or removed as a copy: loaded either way
    assert {"notes.md", "notes.txt", "manual#1", "manual#2", "manual#3", "guide", "handbook"} <= loaded, sorted(loaded)
    assert sum(name.endswith("-ods") for name in loaded) == 2
    assert local_counts["dedup.removed"] >= 15, local_counts  # the copies were found, not just nothing twice
    if method == "hybrid":  # the numbers rule ran on both engines, from the texts (local) and the keys' masks (Ray)
        assert local_counts["dedup.semantic.set_apart_by_numbers"] >= 11, local_counts


@pytest.fixture(scope="module")
def real_text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from real_text_corpus import python_docstrings

    records = python_docstrings(("transformers/models",))
    assert len(records) > 5_000, "the locked environment ships transformers"
    folder = tmp_path_factory.mktemp("real")
    lines = [json.dumps({"id": r["id"], "text": r["text"]}) + "\n" for r in records]
    step = -(-len(lines) // 8)  # eight files: eight load tasks, copies across them
    for k in range(8):
        (folder / f"docstrings-{k}.jsonl").write_text("".join(lines[k * step : (k + 1) * step]))
    return folder


def test_ray_gives_the_local_outputs_on_real_text(ray_cluster, real_text: Path, tmp_path: Path) -> None:
    base = {"data": {"path": str(real_text)}, "dedup": {"method": "minhash"}}
    local, local_counts = _stage(tmp_path / "local", base)
    execution = {"engine": "ray", "ray_address": ray_cluster}
    distributed, ray_counts = _stage(tmp_path / "ray", {**base, "execution": execution})
    _same_outputs(local, distributed)
    assert local_counts == ray_counts and local_counts["dedup.removed.minhash"] > 500


def test_one_big_file_is_loaded_by_several_tasks_with_the_local_outputs(
    ray_cluster, real_text: Path, tmp_path: Path
) -> None:
    """Real text as one JSON Lines file (a UTF-8 byte-order mark first, bad lines and an id repeated far down):
    cut into five parts at line ends, five load tasks; the documents, clusters, rejects (line numbers of the
    whole file) and the file's one summary line are the local engine's."""
    from llm_pipeline.ingest.sources import Kind, file_parts

    lines = [line for f in sorted(real_text.iterdir()) for line in f.read_text().splitlines()]
    first_id = json.loads(lines[0])["id"]
    lines[7] = '{"id": "broken", "text": '
    lines[len(lines) // 2] = json.dumps({"id": first_id, "text": "An id the first line already took, far down."})
    lines.insert(len(lines) * 3 // 4, "")
    big = tmp_path / "corpus" / "all.jsonl"
    big.parent.mkdir()
    big.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode() + b"\n")
    part_bytes = big.stat().st_size // 5 + 1
    parts = file_parts(big, Kind("jsonl", None), part_bytes)
    assert parts is not None and len(parts) == 5
    data = big.read_bytes()
    assert all(data[p.start - 1 : p.start] == b"\n" for p in parts[1:])  # cut at line ends
    assert [p.first_line for p in parts[1:]] == [data[: p.start].count(b"\n") + 1 for p in parts[1:]]

    base = {"data": {"path": str(big.parent)}, "dedup": {"method": "minhash"}}
    local, local_counts = _stage(tmp_path / "local", base)
    execution = {"engine": "ray", "ray_address": ray_cluster, "load_part_bytes": part_bytes}
    distributed, ray_counts = _stage(tmp_path / "ray", {**base, "execution": execution})
    _same_outputs(local, distributed)
    assert local_counts == ray_counts and ray_counts["files"] == 1
    assert ray_counts["rejected.duplicate_id"] == 1 and ray_counts["rejected.invalid_json"] == 1, ray_counts
    assert ray_counts["dedup.removed.minhash"] > 500


def _kill_a_task_during(work: Any, task: str, ready: Any = lambda: True) -> tuple[dict[str, Any], int | None]:
    """Run `work` in a thread and SIGKILL the first worker process seen running Ray task `task` (once `ready()`);
    ({"result": what work returned} or {"error": what it raised}, the pid killed or None)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = work()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller's assertions
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    killed = None
    deadline = time.monotonic() + 120
    watch = _RayTasks()
    while thread.is_alive() and killed is None and time.monotonic() < deadline:
        if ready():
            for pid in watch.running(task):
                os.kill(pid, signal.SIGKILL)
                killed = pid
                break
        time.sleep(0.005)
    thread.join(timeout=300)
    return outcome, killed


class _RayTasks:
    """The worker processes running a Ray task, cheap enough to ask every few milliseconds. A Ray worker titles its
    process `ray::<task or actor method>` while it runs one (`ray::IDLE` between): the processes so titled are listed
    every `relist_s`, a new actor's within that, and only their titles are read in between. (A whole process listing
    at each poll took most of a core on a 2-core machine, from the very stage it watched.)"""

    def __init__(self, relist_s: float = 0.2):
        self.relist_s = relist_s
        self.listed_at = -relist_s
        self.pids: list[int] = []

    def running(self, name: str) -> list[int]:
        import psutil

        if time.monotonic() - self.listed_at >= self.relist_s:
            self.listed_at = time.monotonic()
            listed = psutil.process_iter(["cmdline"])
            self.pids = [p.pid for p in listed if (p.info.get("cmdline") or [""])[0].startswith("ray::")]
        title = f"ray::{name}".encode()
        found = []
        for pid in self.pids:
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(title):
                    found.append(pid)
            except OSError:  # ended since the listing
                continue
        return found


def test_semantic_embeddings_on_actors_give_the_local_clusters(ray_cluster, real_text: Path, tmp_path: Path) -> None:
    """MiniLM (the torch backend) on actors, the texts in four shards over two actors, then the search (600 rows:
    one block task; the static backend's cases search many), against the local stage: the same clusters,
    similarities included."""
    base = {
        "data": {"path": str(real_text), "limit": 600},
        "dedup": {"method": "semantic", "semantic_threshold": 0.9},
    }
    _same_on_both_engines(ray_cluster, tmp_path, base, shard_texts=150, removed_at_least=5)


def _same_on_both_engines(
    address: str, tmp: Path, base: dict, shard_texts: int, removed_at_least: int, block_rows: int = 8192
) -> dict[str, Any]:
    """The stage locally and on Ray (`shard_texts` texts per embedding call, blocks of `block_rows` vectors): the
    same files and counts (returned)."""
    local, local_counts = _stage(tmp / "local", base)
    execution = {"engine": "ray", "ray_address": address, "embed_shard_texts": shard_texts,
                 "vector_block_rows": block_rows}  # fmt: skip
    distributed, ray_counts = _stage(tmp / "ray", {**base, "execution": execution})
    _same_outputs(local, distributed)
    assert local_counts == ray_counts and local_counts["dedup.removed"] >= removed_at_least, local_counts
    return local_counts


@pytest.mark.parametrize(("codec", "parts", "lists"), [("flat", "auto", None), ("sq8", 1, None), ("sq8", 3, 32)])
def test_the_ivf_search_on_ray_gives_the_local_clusters(
    ray_cluster, real_text: Path, tmp_path: Path, codec: str, parts: int | str, lists: int | None
) -> None:
    """`semantic_search: ivf` over 9,217 docstrings in five blocks of vectors (2,048 rows; the last one's last run
    of the search a single row): a task trains the cells on the sampled rows that each block hands over, tasks file
    each block's rows in their cells, fill the index (with `ivf_shards`, one task a part by cells, from its rows of
    every block) into the object store, and search it a block and a part at a time, re-scoring each pair on the
    block's and the part's float vectors (flat: read from the part itself; sq8: handed over beside it); the
    clusters are the local stage's (its own whole index over the same vectors), similarities included. With 32
    cells the cells are trained on a sample (64 rows a cell: 2,048 of 9,217) drawn from the blocks, and searched 2
    at a time: which pairs are found depends on the cells, so on the rows they were trained on; otherwise on every
    row."""
    dedup = {"method": "semantic", "embedding_backend": "static", "semantic_search": "ivf", "ivf_codec": codec,
             "ivf_shards": parts, "ivf_lists": lists, "ivf_probes": 2 if lists else 16}  # fmt: skip
    base = {"data": {"path": str(real_text)}, "dedup": dedup}
    with _relayed_events() as events:
        _same_on_both_engines(ray_cluster, tmp_path, base, shard_texts=2000, removed_at_least=100, block_rows=2048)
    # the Ray driver searched the index in as many parts (its event, relayed from its process)
    [searched] = [json.loads(e) for e in events if '"semantic_ivf"' in e]
    # (auto: one part, 9,217 x 384 float32 vectors being far under a part's 1 GiB)
    assert searched["parts"] == (1 if parts == "auto" else parts) and searched["largest_part_bytes"] > 0, searched


def test_semantic_review_on_ray_lists_the_local_pairs_from_texts_left_in_the_store(
    ray_cluster, real_text: Path, tmp_path: Path
) -> None:
    """Hybrid with `semantic_action: review` and keep `longest`: the semantic step's texts are read by tasks from
    the store, a file's documents in several shards (500 texts each), and the driver holds only their keys; the
    exact search by pairs of blocks of vectors (1,024 rows: the static backend's centring from a mean that one task
    streams over the shards); the files (the pairs listed for review with both similarities, nothing removed by
    cosine) are the local stage's; so are the pairs the words rule keeps apart, from the texts' word sets made
    by tasks where the texts are (the driver holds those of the pairs' members only)."""
    dedup = {"method": "hybrid", "keep": "longest", "embedding_backend": "static", "semantic_action": "review"}
    base = {"data": {"path": str(real_text)}, "dedup": dedup}
    counts = _same_on_both_engines(ray_cluster, tmp_path, base, shard_texts=500, removed_at_least=100, block_rows=1024)
    assert counts["dedup.semantic.set_apart_by_words"] >= 20, counts
    examples = json.loads((tmp_path / "ray" / "cluster_examples.json").read_text())
    assert examples["semantic"]["action"] == "review", examples["semantic"]
    listed = examples["semantic_removals"]
    assert len(listed) >= 20 and not any(r["removed_from_output"] for r in listed), len(listed)
    assert all(r["texts"][r["removed"]] and r["texts"][r["kept"]] for r in listed), "each pair with both texts"


@contextlib.contextmanager
def _relayed_events() -> Iterator[list[str]]:
    """The events logged through the `llm_pipeline` logger meanwhile (the Ray driver's, relayed from its process),
    whatever level and handlers an earlier test left it with."""
    events: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: events.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("llm_pipeline")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield events
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_the_dedup_judge_on_ray_confirms_the_pairs_the_local_stage_confirms(
    ray_cluster, real_text: Path, tmp_path: Path
) -> None:
    """`semantic_action: judge` with the semantic step on Ray: the judge (the suite's OpenAI-compatible server,
    a verdict decided by the two texts) is asked from the Ray driver about the same pairs as locally, and the
    outputs, verdicts included, are the local stage's."""
    from tests.fakes.openai_server import FakeOpenAI

    def by_length(messages: list[dict[str, Any]]) -> str:
        user = next(m["content"] for m in messages if m["role"] == "user")
        same = len(user.split("</document_1>")[0]) % 2 == len(user.split("<document_2>")[1]) % 2
        return json.dumps({"duplicate": same, "reason": "scripted by the texts' lengths"})

    with FakeOpenAI(judge=by_length) as server:
        data = {"path": str(real_text), "limit": 1200}
        local_counts = _judged_on_both_engines(ray_cluster, tmp_path, server, data, "semantic",
                                               requests_per_minute=60_000, concurrency=16)  # fmt: skip
        asked = server.stats()["total"]
    assert local_counts["dedup.judge.duplicate"] > 0 and local_counts["dedup.judge.distinct"] > 0
    # each engine asked once per distinct pair of texts (identical copies share a verdict), nothing more
    sent = local_counts["dedup.judge.http_requests_this_run"]
    assert asked == 2 * sent and 0 < sent <= local_counts["dedup.judge.pairs"]


def test_a_judged_semantic_step_with_one_document_left_asks_nothing_on_either_engine(
    ray_cluster, real_text: Path, tmp_path: Path
) -> None:
    """One document reaches the judged semantic step (on Ray, a key whose text stays in the store): no pair, no
    request, the document kept, the same files as locally."""
    from tests.fakes.openai_server import FakeOpenAI

    with FakeOpenAI() as server:
        counts = _judged_on_both_engines(ray_cluster, tmp_path, server, {"path": str(real_text), "limit": 1}, "hybrid")
        assert server.stats()["total"] == 0
    assert counts["dedup.kept"] == 1, counts


def _judged_on_both_engines(
    address: str, tmp: Path, server: Any, data: dict, method: str, **judge: Any
) -> dict[str, Any]:
    """The stage with `semantic_action: judge` asking `server`, locally and on Ray (each with a journal of its
    own): the same files and counts. Returns the counts."""
    outputs = {}
    for engine in ("local", "ray"):
        asking = {"model": "judge-model", "base_url": server.base_url, "checkpoint_dir": str(tmp / engine), **judge}
        overrides = {
            "data": data,
            "dedup": {"method": method, "embedding_backend": "static", "semantic_action": "judge", "judge": asking},
            **({"execution": {"engine": "ray", "ray_address": address}} if engine == "ray" else {}),
        }
        outputs[engine] = _stage(tmp / f"run-{engine}", overrides)
    (local, local_counts), (distributed, ray_counts) = outputs["local"], outputs["ray"]
    _same_outputs(local, distributed)
    assert local_counts == ray_counts, (local_counts, ray_counts)
    return local_counts


def test_an_embedding_actor_killed_mid_shard_changes_nothing(ray_cluster, real_text: Path, tmp_path: Path) -> None:
    """SIGKILL to an embedding actor while it encodes a shard (seen as `ray::_Embedder.encode`): Ray restarts it
    (the model loaded again) and the call is retried; the clusters are the local stage's, similarities included."""
    base = {"data": {"path": str(real_text), "limit": 400}, "dedup": {"method": "semantic", "semantic_threshold": 0.9}}
    _same_after_a_kill(ray_cluster, tmp_path, base, "_Embedder.encode", embed_shard_texts=100)


def test_a_worker_killed_mid_ivf_search_changes_nothing(ray_cluster, real_text: Path, tmp_path: Path) -> None:
    """SIGKILL to a worker process searching one part of the ivf index (`ray::_ivf_pairs`, the index in 3 parts
    that tasks filled into the object store): Ray reruns the search on the part, which the store still holds; the
    clusters are the local stage's, similarities included."""
    dedup = {"method": "semantic", "embedding_backend": "static", "semantic_search": "ivf", "ivf_shards": 3}
    _same_after_a_kill(ray_cluster, tmp_path, {"data": {"path": str(real_text)}, "dedup": dedup}, "_ivf_pairs")


def test_a_worker_killed_mid_stage_changes_nothing(ray_cluster, real_text: Path, tmp_path: Path) -> None:
    """SIGKILL to the worker process running a load task (which also signs the file for MinHash), while the stage
    runs: Ray retries the task on a worker that lives, and the stage's files are the local engine's."""
    _same_after_a_kill(ray_cluster, tmp_path, {"data": {"path": str(real_text)}, "dedup": {"method": "minhash"}},
                       "_load_file")  # fmt: skip


def _same_after_a_kill(address: str, tmp: Path, base: dict, task: str, **execution: Any) -> None:
    """The stage locally, then on Ray with the first worker process seen running `task` SIGKILLed: it must have
    been killed, and the Ray stage must end with the local files and counts."""
    local, local_counts = _stage(tmp / "local", base)
    on_ray = {**base, "execution": {"engine": "ray", "ray_address": address, **execution}}
    outcome, killed = _kill_a_task_during(lambda: _stage(tmp / "ray", on_ray), task)
    assert killed is not None, f"no process was seen running {task}: nothing was killed"
    assert "error" not in outcome, outcome.get("error")
    _same_outputs(local, tmp / "ray")
    assert outcome["result"][1] == local_counts


def test_an_unreachable_head_fails_at_once_naming_the_address(tmp_path: Path) -> None:
    from llm_pipeline.engine.ray_session import RayUnavailableError
    from llm_pipeline.errors import TransientError
    from llm_pipeline.retries import rule_for
    from tests.conftest import free_port

    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(RayUnavailableError) as raised:
        _stage(tmp_path, {"execution": {"engine": "ray", "ray_address": address}})
    assert time.monotonic() - started < 30  # ray.init alone waits minutes on a silent address
    assert address in str(raised.value) and "execution.ray_address" in str(raised.value)
    assert isinstance(raised.value, TransientError) and rule_for(raised.value) is not None
    assert not (tmp_path / "documents.jsonl").exists()


def test_a_ray_started_for_the_stage_warns_when_its_disk_is_too_full_to_spill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`execution.ray_address` empty: the stage starts a Ray of its own on this machine (what `make run` does with
    `--set execution.engine=ray`). Past Ray's disk test (free space against the whole disk, over
    RAY_local_fs_capacity_threshold) Ray cannot spill objects, and a stage whose objects outgrow the store fails or,
    as seen once here, waits for ever; the stage says so before any work. The threshold set to 0 here makes every
    disk "full" for Ray and for the check alike; this small corpus fits the store, so the stage still completes."""
    import tempfile

    from llm_pipeline.logging import LOGGER_NAME

    monkeypatch.setenv("RAY_local_fs_capacity_threshold", "0")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        _, counts = _stage(tmp_path, {"execution": {"engine": "ray", "ray_address": "", "ray_num_cpus": 1}})
    assert counts["documents"] > 0 and (tmp_path / "documents.jsonl").stat().st_size > 0
    warned = [r.getMessage() for r in caplog.records if "ray_disk_full" in r.getMessage()]
    assert warned, "no ray_disk_full warning from a Ray started on a disk it cannot spill to"
    assert tempfile.gettempdir() in warned[0] and "free_gb" in warned[0]


def test_a_joined_cluster_whose_node_disk_is_too_full_to_spill_is_named_before_the_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`execution.ray_address` set: the disk that matters is each node's, not the driver's. A cluster of its own
    here (a head and one worker node) started with RAY_local_fs_capacity_threshold=0, so every node's disk is "full"
    by Ray's test; before the stage each alive node is asked (a task of no CPU pinned to it) and each one over the
    threshold is named in a `ray_disk_full` warning with its Ray folder; the stage, whose objects fit the store,
    still completes."""
    from llm_pipeline.logging import LOGGER_NAME

    monkeypatch.setenv("RAY_local_fs_capacity_threshold", "0")  # the cluster's processes inherit it
    with cluster_process(workers=1) as address:
        monkeypatch.delenv("RAY_local_fs_capacity_threshold")  # the driver's own disk is not the one asked about
        with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
            _, counts = _stage(tmp_path, {"execution": {"engine": "ray", "ray_address": address}})
    assert counts["documents"] > 0
    warned = [r.getMessage() for r in caplog.records if "ray_disk_full" in r.getMessage()]
    nodes = {re.search(r"node\W+([^\s\",]+ \(\w+\))", w).group(1) for w in warned}
    assert len(warned) == 2 and len(nodes) == 2, warned  # the head and the worker node, once each
    assert all("/tmp/ray" in w and "free_gb" in w for w in warned), warned  # each node's Ray folder


def test_a_stage_stopped_by_its_timeout_leaves_no_ray_process_behind(prefect_server, tmp_path: Path) -> None:
    """QA on Ray (the requests sent from the Ray driver's process, a child of the stage's) to an endpoint that never
    answers: at the stage's limit (execution.stage_timeouts, the QA stage's own: Ray's start and the stages before
    it do not count) `llm-pipeline run` fails naming the stage, and neither the driver nor the
    Ray it started for the run (`ray_address` empty) outlives it. Every process of the run carries a marker in its
    environment, so the check finds them by it, not by name."""
    import uuid

    import psutil

    from tests.qa_support import run_against_a_silent_endpoint

    marker = uuid.uuid4().hex
    settings = {
        "output_path": str(tmp_path / "out"),
        "execution.engine": "ray",
        "execution.ray_address": "",  # a Ray of its own for the run
        "execution.ray_num_cpus": "1",
        "execution.stage_timeouts.generate-qa-pairs": "20s",
    }
    cli = run_against_a_silent_endpoint(prefect_server.api_url, settings, {"RUN_TIMEOUT_TEST_MARK": marker})
    said = cli.stdout + cli.stderr
    assert cli.returncode == 1, said[-3000:]
    assert "execution.stage_timeouts.generate-qa-pairs: the stage was still running after 0:00:20" in said, said[-3000:]

    def left() -> list[str]:
        found = []
        for process in psutil.process_iter(["pid", "name"]):
            with contextlib.suppress(psutil.Error):
                if process.environ().get("RUN_TIMEOUT_TEST_MARK") == marker and process.status() != "zombie":
                    found.append(f"{process.pid} {process.name()}")
        return found

    deadline = time.monotonic() + 60  # Ray's own processes follow their driver out within seconds
    while left() and time.monotonic() < deadline:
        time.sleep(1)
    assert not left(), left()


def test_the_whole_pipeline_gives_the_same_results_on_ray(ray_cluster, prefect_server, tmp_path: Path) -> None:
    """Every stage of the flow with `execution.engine: ray`: the same documents, clusters, QA pairs, benchmark and
    scores as the local engine (times aside). On Ray the QA candidates and the metrics (BERTScore included) are
    computed in shards."""
    from prefect.settings import PREFECT_TASKS_REFRESH_CACHE, temporary_settings

    from flows.pipeline import llm_pipeline

    runs = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        execution = {"engine": engine, "ray_address": ray_cluster if engine == "ray" else ""}
        execution["score_shard_items"] = 7  # evaluation's 40 answers per candidate in six scoring tasks on Ray
        execution["qa_shard_documents"] = 9  # extractive QA's candidates by shard, filtered together
        # the engine is not in any cache key (both give the same files): the second run must not reuse the first
        with temporary_settings({PREFECT_TASKS_REFRESH_CACHE: True}):
            ran = llm_pipeline(config_path=str(CONFIG), overrides={"output_path": str(out), "execution": execution})
        runs[engine] = next(out.rglob("manifest.json")).parent
        stage = json.loads((runs[engine] / "manifest.json").read_text())["stages"][STAGE]
        assert stage["status"] == "completed" and not stage.get("cached"), stage
    for name in (*FILES, "qa_pairs.jsonl", "benchmark.jsonl", "train_pairs.jsonl", "predictions.jsonl"):
        local, distributed = (_records(runs[e] / name) for e in ("local", "ray"))
        assert local, f"{name} is empty: nothing was compared"
        assert local == distributed, name
    scores = [_untimed(json.loads((runs[e] / "evaluation.json").read_text())) for e in ("local", "ray")]
    assert scores[0] == scores[1]

    # the Ray drivers' events (processes of their own) reach the run's logs on the server, as the stages' do
    from tests.test_flow import poll

    driven = ('"ray_connected"', '"scored_on_ray"', '"shards": 34')

    def relayed(found: list[Any]) -> bool:
        return all(any(event in log.message for log in found) for event in driven)

    assert relayed(poll("logs", ran["flow_run_id"], relayed)), "the Ray drivers' events are not in the run's logs"


def _records(path: Path) -> list[str]:
    return sorted(json.dumps(_untimed(json.loads(line)), sort_keys=True) for line in path.read_text().splitlines())


def _untimed(value: Any) -> Any:
    """The value without its timings (seconds, rates, timestamps): what may differ between two equal runs."""
    timing = ("second", "time", "per_s", "_at", "duration", "latency")
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if not any(t in k for t in timing)}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def test_a_head_that_dies_mid_stage_fails_the_stage_naming_the_address(
    real_text: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GCS of a cluster of its own killed while load tasks run: Ray ends the driver from C++ once it gives up
    on the head (60 s by default, 10 here); the stage, whose driver runs in a child process, fails with an error
    naming the address that the stage retry table retries, instead of the flow run's process dying with it."""
    import psutil

    from llm_pipeline.engine.ray_session import RayUnavailableError
    from llm_pipeline.retries import rule_for

    monkeypatch.setenv("RAY_gcs_rpc_server_reconnect_timeout_s", "10")
    with cluster_process() as address:
        port = address.rpartition(":")[2]
        overrides = {"data": {"path": str(real_text)}, "dedup": {"method": "minhash"},
                     "execution": {"engine": "ray", "ray_address": address}}  # fmt: skip
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                _stage(tmp_path / "run", overrides)
            except BaseException as exc:  # noqa: BLE001 - examined below
                outcome["error"] = exc

        stage = threading.Thread(target=run)
        started = time.monotonic()
        stage.start()
        watch = _RayTasks()
        while stage.is_alive() and not watch.running("_load_file") and time.monotonic() - started < 120:
            time.sleep(0.05)
        gcs = [p for p in psutil.process_iter(["cmdline"]) if "gcs_server" in " ".join(p.info["cmdline"] or [])
               and any(c.laddr.port == int(port) for c in p.net_connections("tcp"))]  # fmt: skip
        assert stage.is_alive() and len(gcs) == 1, "the stage ended before its head could be killed"
        gcs[0].kill()
        stage.join(timeout=240)
        assert not stage.is_alive(), "the stage hangs on a dead head"
        error = outcome.get("error")
        assert isinstance(error, RayUnavailableError), repr(error)
        assert address in str(error) and "execution.ray_address" in str(error)
        assert rule_for(error) is not None


# QA generation by shard ---------------------------------------------------------------------------------------
QA_API_KEY = "sk-ray-" + "q" * 20


def _ev_documents() -> list[Any]:
    """The sample corpus as the loader hands it on (its bad records quarantined)."""
    from llm_pipeline.ingest.load import load_documents

    return load_documents(load_config(CONFIG).data).documents


def _qa_config(base_url: str, cache: Path, **extra: Any) -> Any:
    qa = {"backend": "openai", "base_url": base_url, "checkpoint_dir": str(cache), "questions_per_doc": 2, **extra}
    return load_config(CONFIG, {"qa": qa}).qa


def _qa_on_ray(documents: list[Any], qa: Any, address: str, run_id: str, **execution: Any) -> Any:
    """The QA stage's own call on Ray: a driver process of its own (engine/driver.py), shards on the cluster."""
    from llm_pipeline.config import ExecutionConfig
    from llm_pipeline.engine.driver import in_driver

    settings = ExecutionConfig(engine="ray", ray_address=address, **execution)
    target = "llm_pipeline.engine.ray_qa:generate_on_ray"
    return in_driver(settings, target, documents, qa, qa.checkpoint_dir, QA_API_KEY, "ev_charging", run_id, settings)


def _records_of(rows: list[Any]) -> list[str]:
    return sorted(json.dumps(_untimed(r if isinstance(r, dict) else r.model_dump()), sort_keys=True) for r in rows)


def _pairs(result: Any) -> list[str]:
    return _records_of(result.pairs)


def test_qa_requests_by_shard_give_the_local_pairs_and_are_sent_once(ray_cluster, tmp_path: Path) -> None:
    """An OpenAI-compatible server (tests/fakes) that fails some documents' first requests (429, 503, a proxy's
    HTML page): the requests of 60 documents in shards of 7 on two Ray nodes give the local engine's pairs,
    rejects and counts, each document asked as often as locally; a second run on Ray sends nothing."""
    from llm_pipeline.qa import generate_qa
    from tests.fakes.openai_server import FakeOpenAI

    documents = _ev_documents()[:60]
    texts = [d.text for d in documents]
    once = [t for t in texts if sum(t in other for other in texts) == 1]  # a marker no other document holds
    faults = {text: ["429:0.1", "503", "ok"] for text in once[3:6]}
    faults[once[10]] = ["html", "ok"]
    asked = {}
    for engine in ("local", "ray"):
        with FakeOpenAI(latency_s=0.02, faults=faults) as fake:
            qa = _qa_config(fake.base_url, tmp_path / f"{engine}-cache")
            if engine == "local":
                result = generate_qa(documents, qa, api_key=QA_API_KEY, domain="ev_charging", run_id="local")
            else:
                result = _qa_on_ray(documents, qa, ray_cluster, "ray", qa_shard_documents=7)
            asked[engine] = fake.stats()["requests"]
        if engine == "local":
            local = result
    assert _pairs(result) == _pairs(local) and len(local.pairs) >= 60
    assert _records_of(result.rejects) == _records_of(local.rejects)
    assert result.counts(60) == local.counts(60) and result.requests["sent"] == local.requests["sent"] == 60
    assert result.requests["http_requests"] == local.requests["http_requests"] > 60  # the faults were retried
    assert asked["ray"] == asked["local"]  # every document's requests, retries included, as often as locally
    assert result.cost_sent_usd == local.cost_sent_usd

    with FakeOpenAI() as fake:  # the journal answers everything: nothing is sent again
        again = _qa_on_ray(documents, _qa_config(fake.base_url, tmp_path / "ray-cache"), ray_cluster, "ray-2")
        assert fake.stats()["posts"] == 0
    assert _pairs(again) == _pairs(local) and again.requests["reused"] == again.requests["total"]


def test_the_runs_cap_holds_across_shards(ray_cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """qa.max_total_tokens over shards that send at once on two nodes: one budget (an actor) for all of them, so
    what the server billed stays within the cap, the rest is refused and the result says partial. The journal
    folder is given relative to the working folder, as a config file would: the tasks (which run in folders of
    their own) write it there all the same."""
    from tests.fakes.openai_server import FakeOpenAI

    documents = _ev_documents()[:40]
    cap = 12_000
    with FakeOpenAI(latency_s=0.05) as fake:
        qa = _qa_config(fake.base_url, Path("cache"), max_total_tokens=cap)
        monkeypatch.chdir(tmp_path)  # where the run's working folder is (the config is read by now)
        result = _qa_on_ray(documents, qa, ray_cluster, "capped", qa_shard_documents=5)
        billed = fake.stats()["billed"]
    assert 0 < billed["prompt_tokens"] + billed["completion_tokens"] <= cap
    assert result.status.startswith("partial: budget reached") and "qa.max_total_tokens" in result.status
    assert 0 < result.requests["refused_budget"] < result.requests["total"]
    assert result.usage_sent.prompt_tokens + result.usage_sent.completion_tokens <= cap
    journaled = (tmp_path / "cache" / "qa-journal.jsonl").read_text().splitlines()
    assert len(journaled) == result.requests["total"] - result.requests["refused_budget"] and result.pairs


def test_a_worker_killed_mid_qa_loses_nothing_and_pays_little_twice(ray_cluster, tmp_path: Path) -> None:
    """SIGKILL to a worker while its shard's requests are in flight: Ray runs the shard again, which reads the
    journal first and sends only what no shard journaled; the pairs are the local ones, and no more requests
    reach the server than the killed shard's own."""
    from llm_pipeline.qa import generate_qa
    from tests.fakes.openai_server import FakeOpenAI

    documents = _ev_documents()[:30]
    with FakeOpenAI() as fake:
        local = generate_qa(
            documents,
            _qa_config(fake.base_url, tmp_path / "local"),
            api_key=QA_API_KEY,
            domain="ev_charging",
            run_id="l",
        )
        needed = fake.stats()["posts"]
    with FakeOpenAI(latency_s=0.4) as fake:
        qa = _qa_config(fake.base_url, tmp_path / "ray")
        outcome, killed = _kill_a_task_during(
            lambda: _qa_on_ray(documents, qa, ray_cluster, "killed", qa_shard_documents=5),
            "_send_shard",
            ready=lambda: fake.stats()["posts"] >= 3,  # a shard is sending
        )
        posts = fake.stats()["posts"]
    assert killed is not None, "no QA shard was seen running: nothing was killed"
    assert "error" not in outcome, outcome.get("error")
    assert _pairs(outcome["result"]) == _pairs(local)
    shard_requests = 5 * max(1, needed // len(documents))  # the killed shard's requests, at most
    assert needed <= posts <= needed + shard_requests, (needed, posts)


# Evaluation candidates on actors ------------------------------------------------------------------------------
def _tiny_candidate(tmp_path: Path, count: int, max_new_tokens: int, batch_size: int) -> tuple[list[Any], Any]:
    """`count` benchmark items on the sample's documents, and an evaluation config of a tiny Llama (built here,
    loaded by the users' loading code) beside the retrieval baseline."""
    from llm_pipeline.config import CandidateConfig, EvaluationConfig
    from llm_pipeline.evaluation.candidates import answer_messages
    from llm_pipeline.records import BenchmarkItem
    from tests.tiny_models import save, tiny_llama, train_tokenizer

    documents = _ev_documents()
    items = [
        BenchmarkItem(
            id=f"b{k}",
            question=f"What does the text say about {d.text.split()[3]}?",
            answer=" ".join(d.text.split()[:6]),
            context=d.text,
            category=d.category,
            difficulty="easy",
            source_document_id=d.id,
        )
        for k, d in enumerate(documents[k % len(documents)] for k in range(count))
    ]
    tokenizer = train_tokenizer([m["content"] for i in items for m in answer_messages(i.question, i.context)])
    model = save(tiny_llama(tokenizer, seed=3), tokenizer, tmp_path / "tiny")
    tiny = CandidateConfig(
        name="tiny", kind="hf", model=str(model), device="cpu", max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    config = EvaluationConfig(
        metrics=["exact_match", "rouge", "bleu"], candidates=[tiny, CandidateConfig(name="retrieval", kind="retrieval")]
    )
    return items, config


def test_an_hf_candidate_answers_on_actors_as_in_the_stages_process(ray_cluster, tmp_path: Path) -> None:
    """A tiny Llama answering 13 benchmark items: on two Ray actors (one per node, each with the model loaded once
    and half of the questions) it gives the answers and scores it gives in one process; the retrieval baseline
    beside it stays in the stage's process."""
    from llm_pipeline.config import ExecutionConfig
    from llm_pipeline.engine.ray_candidates import ray_answerer
    from llm_pipeline.evaluation.workflow import evaluate_candidates

    items, config = _tiny_candidate(tmp_path, 13, max_new_tokens=8, batch_size=4)
    local = evaluate_candidates(items, config)
    execution = ExecutionConfig(engine="ray", ray_address=ray_cluster, candidate_actors=2)
    distributed = evaluate_candidates(items, config, answerer=ray_answerer(execution, "INFO", True))
    assert _records_of(distributed.predictions) == _records_of(local.predictions)
    assert len({p.prediction for p in local.predictions if p.candidate == "tiny"}) > 1  # it answered, variously
    assert _untimed(distributed.summary["tiny"]["overall"]) == _untimed(local.summary["tiny"]["overall"])
    generation = distributed.summary["tiny"]["generation"]
    assert generation["actors"] == 2 and generation["new_tokens"] == local.summary["tiny"]["generation"]["new_tokens"]


def test_an_actor_killed_mid_shard_is_restarted_and_its_answers_are_the_same(ray_cluster, tmp_path: Path) -> None:
    """SIGKILL to an actor's process while it answers its shard (seen as `ray::CandidateActor.answer`): Ray
    restarts the actor (the model loaded again) and retries the shard; the answers, scores and new tokens are the
    stage's process's."""
    from llm_pipeline.config import ExecutionConfig
    from llm_pipeline.engine.ray_candidates import ray_answerer
    from llm_pipeline.evaluation.workflow import evaluate_candidates

    items, config = _tiny_candidate(tmp_path, 48, max_new_tokens=48, batch_size=1)  # a shard lasts seconds
    local = evaluate_candidates(items, config)
    execution = ExecutionConfig(engine="ray", ray_address=ray_cluster, candidate_actors=2)
    outcome, killed = _kill_a_task_during(
        lambda: evaluate_candidates(items, config, answerer=ray_answerer(execution, "INFO", True)),
        "CandidateActor.answer",
    )
    assert killed is not None, "no actor was seen answering: nothing was killed"
    assert "error" not in outcome, outcome.get("error")
    distributed = outcome["result"]
    assert _records_of(distributed.predictions) == _records_of(local.predictions)
    assert _untimed(distributed.summary["tiny"]["overall"]) == _untimed(local.summary["tiny"]["overall"])
    assert distributed.summary["tiny"]["generation"]["new_tokens"] == local.summary["tiny"]["generation"]["new_tokens"]


def test_the_local_qa_backend_generates_on_actors_and_a_killed_one_loses_nothing(ray_cluster, tmp_path: Path) -> None:
    """The `local` backend (a tiny Llama built here, greedy) on two actors, each with the model loaded once and a
    shard at a time; one actor is SIGKILLed while it generates: Ray restarts it and the shard is sent again minus
    what the journal holds. Every document's outcome (the model's raw replies, re-asked, then quarantined) is the
    stage's process's; a second run on Ray generates nothing."""
    from llm_pipeline.qa import generate_qa
    from llm_pipeline.qa.prompts import load_prompts
    from tests.tiny_models import save, tiny_llama, train_tokenizer

    documents = _ev_documents()[:16]
    prompts = load_prompts()
    texts = [
        m["content"]
        for d in documents
        for m in prompts.messages(text=d.text, n=2, domain="ev_charging", category=None, chunk_index=0, chunk_count=1)
    ]
    tokenizer = train_tokenizer(texts)
    model = save(tiny_llama(tokenizer, seed=5), tokenizer, tmp_path / "tiny")

    def qa(cache: str) -> Any:
        settings = {"backend": "local", "model_name": str(model), "temperature": 0.0, "max_tokens": 48}
        settings |= {"batch_size": 2, "questions_per_doc": 2, "max_format_retries": 1, "device": "cpu"}
        return load_config(CONFIG, {"qa": {**settings, "checkpoint_dir": str(tmp_path / cache)}}).qa

    local = generate_qa(documents, qa("local"), domain="ev_charging", run_id="local")
    outcome, killed = _kill_a_task_during(
        lambda: _qa_on_ray(documents, qa("ray"), ray_cluster, "ray", qa_shard_documents=4, qa_actors=2),
        "LocalModelActor.send",
    )
    assert killed is not None, "no actor was seen generating: nothing was killed"
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert _pairs(result) == _pairs(local)
    assert _records_of(result.rejects) == _records_of(local.rejects) and len(local.rejects) == 16
    assert result.counts(16) == local.counts(16)
    again = _qa_on_ray(documents, qa("ray"), ray_cluster, "ray-2", qa_shard_documents=4, qa_actors=2)
    assert again.requests["sent"] == 0 and again.requests["reused"] == again.requests["total"]
    assert _records_of(again.rejects) == _records_of(local.rejects)
