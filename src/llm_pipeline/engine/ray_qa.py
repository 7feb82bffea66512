"""QA generation on Ray: the documents in shards of `execution.qa_shard_documents`, one task per shard.

- `extractive`: each task proposes its documents' candidates (`qa.generate.extractive_candidates`); the filters,
  which look across documents (the same question in many of them), run once over all of them, in document order,
  in the driver, as locally.
- A model-backed backend (`openai`, a plug-in): each task sends its documents' requests that the journal has not
  answered (`qa.generate.send_documents`) and journals every outcome as it comes, in the same journal file
  (`qa.checkpoint_dir`, which must be a folder every Ray node sees: the stack's /shared); a task retried after
  its node died reads the journal first and sends only what is not in it, so a request is never paid twice
  across nodes (as across local retries, the request in flight at the kill aside). The run's client limits
  (`qa.requests_per_minute`, `tokens_per_minute`, `concurrency`) are shared out between the tasks that run at
  once (no more of them than the cluster's CPUs or `qa.concurrency`); the run's cap (`qa.max_cost_usd`,
  `max_total_tokens`) is one Budget in an actor that every task reserves from. The result is then read from the
  journal and the ledger in the driver (`qa.generate.assemble`), so it is the local result.
- The `local` backend: on actors that load the model once each (one per GPU of the cluster, `num_gpus=1`, or
  `execution.qa_actors` of them; on a CPU-only cluster with `qa_actors` unset, and for a model split over the
  GPUs of one host (`qa.device_map`), the stage's process generates, as locally). The shards go to whichever
  actor is free and are journaled as with an API backend; an actor that dies is restarted (the model loaded
  again) and its shard sent again, minus what the journal holds. Greedy decoding (`qa.temperature: 0`) gives the
  local pairs; sampled decoding depends on which prompts share a batch, on Ray as locally with another batch size.
- Not fanned out: `qa.mode: batch` (the provider runs the batch; one process submits and polls it).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import ray

from llm_pipeline.aio import run_sync
from llm_pipeline.config import ExecutionConfig, QAConfig
from llm_pipeline.engine.ray_session import cluster_cpus, fetch, ray_session
from llm_pipeline.logging import get_logger
from llm_pipeline.qa.backends import EXTRACTIVE, open_backend, resolve_backend
from llm_pipeline.qa.budget import Budget
from llm_pipeline.qa.checkpoint import Journal, Ledger, Usage
from llm_pipeline.qa.generate import (
    JOURNAL_FILE,
    QAResult,
    Sending,
    assemble,
    extractive_candidates,
    finish_extractive,
    generate_qa,
    plan,
    run_budget,
    send_documents,
)
from llm_pipeline.records import Document, QAPair

log = get_logger("qa")

LOCAL = "local"


@ray.remote
class BudgetKeeper:
    """The run's one Budget, for every shard: `reserve` raises BudgetReachedError (to the caller, as itself) when
    the cap would be crossed."""

    def __init__(self, budget: Budget):
        self.budget = budget

    def reserve(self, worst: Usage) -> Usage:
        return self.budget.reserve(worst)

    def settle(self, held: Usage, billed: Usage | None) -> None:
        self.budget.settle(held, billed)

    def state(self) -> Budget:
        return self.budget


class SharedBudget:
    """The Budget interface the backends call (`capped`, `reserve`, `settle`), answered by the BudgetKeeper."""

    capped = True

    def __init__(self, keeper: Any):
        self.keeper = keeper

    def _call(self, ref: Any) -> Any:
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            raise (cause if isinstance(cause, BaseException) else exc) from None

    def reserve(self, worst: Usage) -> Usage:
        return self._call(self.keeper.reserve.remote(worst))

    def settle(self, held: Usage, billed: Usage | None) -> None:
        self._call(self.keeper.settle.remote(held, billed))


@ray.remote
def _extractive_shard(documents: list[Document], config: QAConfig) -> list[QAPair]:
    return extractive_candidates(documents, config, progress=False)


@ray.remote
def _send_shard(
    documents: list[Document],
    config: QAConfig,
    backend_name: str,
    api_key: str | None,
    folder: str,
    run_id: str,
    domain: str,
    keeper: Any,
) -> Sending:
    journal = Journal(Path(folder) / JOURNAL_FILE)  # read now: what another shard's earlier attempt sent is skipped
    budget = SharedBudget(keeper) if keeper is not None else Budget(None, None, None)
    return run_sync(
        send_documents(documents, config, backend_name, api_key, journal, Ledger(Path(folder), run_id), domain, budget)
    )


@ray.remote
class LocalModelActor:
    """The `local` backend's model, loaded once; sends each shard it is given, its outcomes journaled."""

    def __init__(self, config: QAConfig, threads: int):
        import torch

        torch.set_num_threads(threads)  # its share of the node, not every core of it
        self.backend = open_backend(LOCAL, config, None)

    def send(self, documents: list[Document], config: QAConfig, folder: str, run_id: str, domain: str, keeper: Any):
        journal = Journal(Path(folder) / JOURNAL_FILE)  # read now: a retried shard skips what it journaled
        budget = SharedBudget(keeper) if keeper is not None else Budget(None, None, None)
        ledger = Ledger(Path(folder), run_id)
        return run_sync(
            send_documents(documents, config, LOCAL, None, journal, ledger, domain, budget, opened=self.backend)
        )


def local_actors(config: QAConfig, execution: ExecutionConfig) -> int:
    """How many actors generate for the `local` backend on this cluster (0: the stage's process does)."""
    if config.device_map is not None:
        return 0  # split over the GPUs of one host: it needs them all in one process
    return execution.qa_actors if execution.qa_actors is not None else int(ray.cluster_resources().get("GPU", 0))


def shares(config: QAConfig, at_once: int) -> QAConfig:
    """The run's client limits split between `at_once` tasks running together (their sum is the run's); the
    prompt folder made absolute (a task runs in a folder of its own)."""
    return config.model_copy(
        update={
            "prompt_dir": config.prompt_dir.resolve() if config.prompt_dir is not None else None,
            "requests_per_minute": config.requests_per_minute / at_once if config.requests_per_minute else None,
            "tokens_per_minute": config.tokens_per_minute / at_once if config.tokens_per_minute else None,
            "concurrency": max(1, math.ceil(config.concurrency / at_once)),
        }
    )


def generate_on_ray(
    documents: list[Document],
    config: QAConfig,
    checkpoint_dir: Path,
    api_key: str | None,
    domain: str,
    run_id: str,
    execution: ExecutionConfig,
) -> QAResult:
    """`qa.generate.generate_qa` with its per-document work on the Ray cluster (module docstring)."""
    backend = resolve_backend(config, api_key)

    def in_process(reason: str) -> QAResult:
        log.info("qa_in_process", backend=backend, mode=config.mode, reason=reason)
        return generate_qa(
            documents, config, checkpoint_dir=checkpoint_dir, api_key=api_key, domain=domain, run_id=run_id
        )

    if config.mode == "batch" and backend == "openai":
        return in_process("the provider runs the batch")
    size, started = execution.qa_shard_documents, time.perf_counter()
    with ray_session(execution) as address:
        if backend == LOCAL and local_actors(config, execution) == 0:
            return in_process("no GPU in the cluster and no execution.qa_actors, or a model split by qa.device_map")
        log.info(
            "qa_backend_selected", backend=backend, model=config.model_name, base_url=config.base_url, engine="ray"
        )
        if backend == EXTRACTIVE:
            task = _extractive_shard.options(max_retries=execution.task_retries)
            refs = [task.remote(documents[i : i + size], config) for i in range(0, len(documents), size)]
            candidates = [pair for shard in fetch(refs, address) for pair in shard]
            result = finish_extractive(documents, candidates, config)
            result.seconds = time.perf_counter() - started
            log.info("qa_generated", backend=backend, shards=len(refs), cost_usd=0.0, **result.counts(len(documents)))
            return result
        # absolute: a Ray worker runs in a folder of its own (and on another node, where the path must be the same)
        folder = Path(config.checkpoint_dir or checkpoint_dir).resolve()
        journal, ledger = Journal(folder / JOURNAL_FILE), Ledger(folder, run_id)
        jobs, todo = plan(documents, config, backend, journal, domain)
        waiting = {job.document.id for job in todo}
        pending = [d for d in documents if d.id in waiting]  # only documents with requests left go to the cluster
        shards = [pending[i : i + size] for i in range(0, len(pending), size)]
        at_once = max(1, min(len(shards), cluster_cpus(), config.concurrency))
        budget = run_budget(config, backend, ledger)
        keeper = BudgetKeeper.remote(budget) if budget.capped else None
        log.info(
            "qa_requests_planned", total=len(jobs), reused=len(jobs) - len(todo), to_send=len(todo), shards=len(shards)
        )
        if backend == LOCAL:
            sending = _send_on_actors(shards, config, execution, str(folder), run_id, domain, keeper, address)
        else:
            task = _send_shard.options(max_retries=execution.task_retries)
            shard_config = shares(config, at_once)
            sending, in_flight = Sending(), []
            for shard in shards:  # at most `at_once` shards sending at a time: their shares add up to the limits
                if len(in_flight) >= at_once:
                    done, in_flight = ray.wait(in_flight, num_returns=1)
                    sending += fetch(done[0], address)
                in_flight.append(
                    task.remote(shard, shard_config, backend, api_key, str(folder), run_id, domain, keeper)
                )
            for done in fetch(in_flight, address):
                sending += done
        if keeper is not None:
            budget = fetch(keeper.state.remote(), address)
    journal = Journal(folder / JOURNAL_FILE)  # every shard's lines, read again
    result = assemble(documents, config, backend, journal, ledger, domain, sending, budget, jobs)
    result.seconds = time.perf_counter() - started
    log.info(
        "qa_generated",
        backend=backend,
        shards=len(shards),
        cost_usd=result.cost_sent_usd,
        **result.counts(len(documents)),
    )
    return result


def _send_on_actors(
    shards: list[list[Document]],
    config: QAConfig,
    execution: ExecutionConfig,
    folder: str,
    run_id: str,
    domain: str,
    keeper: Any,
    address: str,
) -> Sending:
    """The `local` backend's shards on actors that each load the model once, a shard to whichever is free."""
    if not shards:
        return Sending()
    gpus = int(ray.cluster_resources().get("GPU", 0))
    resources = {"num_gpus": 1} if gpus else {"num_cpus": 1}
    retries = execution.task_retries
    config = shares(config, 1)  # the prompt folder absolute; the limits are an API client's
    actors = [
        LocalModelActor.options(max_restarts=retries, max_task_retries=retries, **resources).remote(config, 1)
        for _ in range(min(local_actors(config, execution), len(shards)))
    ]
    sending, free, in_flight = Sending(), list(actors), {}
    try:  # the actors (and the GPUs they hold) released on an external cluster even when a shard fails
        for shard in shards:
            if not free:
                done, _ = ray.wait(list(in_flight), num_returns=1)
                sending += fetch(done[0], address)
                free.append(in_flight.pop(done[0]))
            actor = free.pop()
            in_flight[actor.send.remote(shard, config, folder, run_id, domain, keeper)] = actor
        for done in fetch(list(in_flight), address):
            sending += done
    finally:
        for actor in actors:
            ray.kill(actor)
    log.info("qa_local_on_ray", actors=len(actors), shards=len(shards), gpus_per_actor=1 if gpus else 0)
    return sending
