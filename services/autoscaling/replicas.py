"""A compose service's worker containers, scaled through the Docker Engine API as `docker compose up --scale` would:
a new replica is a copy of a running one (image, command, environment, volumes, network and its aliases,
healthcheck, restart policy) under the compose project's labels and the next container number, so `docker compose
ps`, `make logs` and `make down` see it as one of the service's own. A replica is removed by `docker stop`, which
the worker (workers/serve.py) takes as "drain": it takes no new run and exits once its runs have finished.

GPU workers: a replica made for a GPU pool is pinned to one device of its own (a device request by id and
NVIDIA_VISIBLE_DEVICES), so a pool never holds more workers than the host has GPUs.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from typing import Any

PROJECT = "com.docker.compose.project"
SERVICE = "com.docker.compose.service"
NUMBER = "com.docker.compose.container-number"
ONEOFF = "com.docker.compose.oneoff"
MANAGED = "llm-pipeline.autoscaler"  # "true" on the replicas the autoscaler made
DEVICES = "llm-pipeline.gpu-devices"  # the GPUs a replica was pinned to, comma-separated


def _nvidia(request: dict[str, Any]) -> bool:
    capabilities = [cap for group in request.get("Capabilities") or [] for cap in group]
    return request.get("Driver") == "nvidia" or "gpu" in capabilities


def uses_gpus(attrs: dict[str, Any]) -> bool:
    return any(_nvidia(request) for request in (attrs["HostConfig"].get("DeviceRequests") or []))


def claimed_devices(attrs: dict[str, Any], devices: list[str]) -> set[str]:
    """The GPUs a container holds: its device ids, or for a request by count the first `count` of `devices`
    (the NVIDIA runtime hands out a counted request from the first devices), or all of them for count -1."""
    claims: set[str] = set()
    for request in attrs["HostConfig"].get("DeviceRequests") or []:
        if not _nvidia(request):
            continue
        if request.get("DeviceIDs"):
            claims |= {str(device) for device in request["DeviceIDs"]}
        elif request.get("Count", 0) == -1:
            claims |= set(devices)
        elif request.get("Count"):
            claims |= set(devices[: request["Count"]])
    return claims


def worker_limit_of(attrs: dict[str, Any]) -> int | None:
    """The `--limit N` a worker container was started with (its flow runs at once), if any."""
    command = list(attrs["Config"].get("Cmd") or [])
    for at, part in enumerate(command):
        if part == "--limit" and at + 1 < len(command) and command[at + 1].isdigit():
            return int(command[at + 1])
        if part.startswith("--limit=") and part[8:].isdigit():
            return int(part[8:])
    return None


def replica_config(template: dict[str, Any], name: str, number: int, devices: list[str] | None = None) -> dict:
    """The Engine API's create body for a new replica of `template` (a container's inspect output)."""
    config = copy.deepcopy(template["Config"])
    for own in ("Hostname", "Domainname"):  # each replica is its own host: the worker's name comes from it
        config.pop(own, None)
    labels = dict(config.get("Labels") or {})
    labels.update({NUMBER: str(number), MANAGED: "true", ONEOFF: "False"})
    labels.pop("com.docker.compose.replace", None)
    host = copy.deepcopy(template["HostConfig"])
    if devices is not None:
        labels[DEVICES] = ",".join(devices)
        kept = [request for request in host.get("DeviceRequests") or [] if not _nvidia(request)]
        host["DeviceRequests"] = [
            *kept,
            {"Driver": "nvidia", "Count": 0, "DeviceIDs": devices, "Capabilities": [["gpu"]], "Options": {}},
        ]
        env = [item for item in config.get("Env") or [] if not item.startswith("NVIDIA_VISIBLE_DEVICES=")]
        config["Env"] = [*env, f"NVIDIA_VISIBLE_DEVICES={','.join(devices)}"]
    config["Labels"] = labels
    config["HostConfig"] = host
    service = labels.get(SERVICE, "")
    config["NetworkingConfig"] = {
        "EndpointsConfig": {
            network: {"Aliases": [alias for alias in (service, name) if alias]}
            for network in (template.get("NetworkSettings", {}).get("Networks") or {})
        }
    }
    return config


@dataclass
class Replica:
    id: str
    name: str
    number: int
    managed: bool
    status: str
    attrs: dict[str, Any]


class ComposeService:
    """The containers of one service of one compose project, and the two ways to change how many there are."""

    def __init__(self, client: Any, project: str, service: str):
        self.client = client  # docker.DockerClient
        self.project = project
        self.service = service
        self._draining: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()

    def replicas(self, everything: bool = False) -> list[Replica]:
        filters = {"label": [f"{PROJECT}={self.project}", f"{SERVICE}={self.service}"]}
        found = []
        for container in self.client.containers.list(all=everything, filters=filters):
            attrs = container.attrs
            labels = attrs["Config"].get("Labels") or {}
            if labels.get(ONEOFF, "False") == "True":
                continue
            found.append(
                Replica(
                    id=container.id,
                    name=container.name,
                    number=int(labels.get(NUMBER, "0") or 0),
                    managed=labels.get(MANAGED) == "true",
                    status=attrs["State"]["Status"],
                    attrs=attrs,
                )
            )
        return sorted(found, key=lambda replica: replica.number)

    def serving(self) -> list[Replica]:
        """Replicas that take runs: running (or restarting after a crash), not being drained."""
        with self._lock:
            draining = {key for key, thread in self._draining.items() if thread.is_alive()}
        return [r for r in self.replicas() if r.status in ("running", "restarting") and r.id not in draining]

    @property
    def draining(self) -> int:
        with self._lock:
            return sum(thread.is_alive() for thread in self._draining.values())

    def add(self, template: Replica, devices: list[list[str]] | None = None, count: int = 1) -> list[str]:
        """Start `count` replicas copied from `template` (one device list each for a GPU pool); their names."""
        started = []
        for at in range(count):
            number = max((r.number for r in self.replicas(everything=True)), default=0) + 1
            name = f"{self.project}-{self.service}-{number}"
            body = replica_config(template.attrs, name, number, devices[at] if devices else None)
            created = self.client.api.create_container_from_config(body, name=name)
            self.client.api.start(created["Id"])
            started.append(name)
        return started

    def busy(self, replica: Replica) -> bool:
        """Whether the worker holds a flow run: a process worker's runs are child processes of its main one."""
        try:
            listing = self.client.api.top(replica.id, ps_args="-o pid,ppid,args")
        except Exception:
            return True  # unknown: treat as busy, so idle ones go first
        rows = listing.get("Processes") or []
        return any("urllib.request" not in " ".join(row) for row in rows[1:])  # the healthcheck's probe is not work

    def choose_for_removal(self, count: int) -> list[Replica]:
        """Idle before busy, the autoscaler's own before compose's, newest first."""
        ranked = sorted(self.serving(), key=lambda r: (self.busy(r), not r.managed, -r.number))
        return ranked[:count]

    def drain(self, replica: Replica, timeout_s: float, done: Any = None) -> None:
        """Stop `replica` in the background: SIGTERM (the worker drains), SIGKILL only after `timeout_s`; then the
        container is removed. `done(replica, error)` is called at the end."""

        def stop() -> None:
            error = None
            try:
                container = self.client.containers.get(replica.id)
                container.stop(timeout=int(timeout_s))
                container.remove()
            except Exception as exc:  # engine restarted, or other trouble: say so, never crash the loop
                error = None if _gone_or_going(exc) else exc
            if done is not None:
                done(replica, error)

        thread = threading.Thread(target=stop, name=f"drain-{replica.name}", daemon=True)
        with self._lock:
            self._draining = {key: t for key, t in self._draining.items() if t.is_alive()}
            self._draining[replica.id] = thread
        thread.start()

    def remove_exited(self) -> list[str]:
        """The autoscaler's own replicas that exited (a drain cut short by a restart of the autoscaler): removed."""
        gone = []
        for replica in self.replicas(everything=True):
            if replica.managed and replica.status in ("exited", "dead", "created"):
                with self._lock:
                    if replica.id in self._draining and self._draining[replica.id].is_alive():
                        continue
                try:
                    self.client.containers.get(replica.id).remove(force=True)
                    gone.append(replica.name)
                except Exception:
                    continue
        return gone


class SwarmService:
    """A Docker Swarm service's replicas (a stack deployed with `make swarm-up`), scaled by its replica count.
    Swarm picks which task a scale-down stops; the worker takes the SIGTERM as drain and swarm waits the
    service's stop grace period (SCALING_DRAIN_TIMEOUT) before a SIGKILL, so the choice costs no run."""

    def __init__(self, client: Any, stack: str, service: str):
        self.client = client
        self.project = stack
        self.service = service
        self.name = f"{stack}_{service}"

    def _spec(self) -> Any:
        return self.client.services.get(self.name)

    def _replica(self, task: dict[str, Any], spec: dict[str, Any]) -> Replica:
        container = spec["TaskTemplate"]["ContainerSpec"]
        attrs = {  # what the autoscaler reads of a replica: the worker's command line and its devices
            "Config": {"Cmd": container.get("Args") or container.get("Command") or [], "Image": container["Image"]},
            "HostConfig": {"DeviceRequests": None},
        }
        slot = int(task.get("Slot") or 0)
        return Replica(task["ID"], f"{self.name}.{slot}", slot, slot > 1, task["Status"]["State"], attrs)

    def replicas(self, everything: bool = False) -> list[Replica]:
        service = self._spec()
        tasks = service.tasks() if everything else service.tasks(filters={"desired-state": "running"})
        return sorted((self._replica(t, service.attrs["Spec"]) for t in tasks), key=lambda r: r.number)

    def serving(self) -> list[Replica]:
        """Tasks swarm keeps running (starting ones included: they are the replicas asked for)."""
        return self.replicas()

    @property
    def draining(self) -> int:
        tasks = self._spec().tasks(filters={"desired-state": "shutdown"})
        return sum(task["Status"]["State"] == "running" for task in tasks)

    def _scale(self, replicas: int) -> None:
        service = self._spec()
        service.scale(max(0, replicas))

    def add(self, template: Replica, devices: list[list[str]] | None = None, count: int = 1) -> list[str]:
        desired = self._spec().attrs["Spec"]["Mode"]["Replicated"]["Replicas"]
        self._scale(desired + count)
        return [f"{self.name}.{slot}" for slot in range(desired + 1, desired + count + 1)]

    def busy(self, replica: Replica) -> bool:  # swarm chooses; nothing to rank
        return False

    def choose_for_removal(self, count: int) -> list[Replica]:
        return sorted(self.serving(), key=lambda r: -r.number)[:count]

    def drain(self, replica: Replica, timeout_s: float, done: Any = None) -> None:
        desired = self._spec().attrs["Spec"]["Mode"]["Replicated"]["Replicas"]
        error = None
        try:
            self._scale(desired - 1)
        except Exception as exc:
            error = exc
        if done is not None:
            done(replica, error)

    def remove_exited(self) -> list[str]:
        return []  # swarm removes its own tasks


def removal_for(service: ComposeService | SwarmService, keep: int) -> list[Replica]:
    """The replicas to drain so that `keep` stay serving, counted now: a scale-down decided on a count taken a
    moment earlier must not go below its target when a replica left meanwhile (stopped by someone else, or it
    exited), which "remove as many as the decision's difference" would (seen: 3 -> 1 drained two of the two left)."""
    excess = len(service.serving()) - keep
    return service.choose_for_removal(excess) if excess > 0 else []


def _gone_or_going(error: Exception) -> bool:
    """The container is already removed, or another remover (make down, a test, a second autoscaler) is removing
    it (409 Conflict): the drain's end is reached all the same."""
    from docker.errors import APIError, NotFound

    if isinstance(error, NotFound):
        return True
    return isinstance(error, APIError) and error.status_code == 409
