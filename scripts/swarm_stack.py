"""The compose stack as a Docker Swarm stack file: reads `docker compose config --format json` (the same compose
files and .env, resolved) on stdin and writes what `docker stack deploy -c -` accepts on stdout.

    docker compose --env-file .env -f docker-compose.yml -f docker-compose.cpu.yml config --format json \\
      | python scripts/swarm_stack.py | docker stack deploy -c - llm-pipeline      # (make swarm-up)

What changes, and why (swarm's compose loader is older than Compose's and runs services, not containers):
- `build`, `depends_on`, `restart`, `profiles` and the `x-` anchors go: a stack runs images already built (push
  them to a registry every node reaches), starts services in no order (each one restarts until what it needs
  answers) and restarts by `deploy.restart_policy`.
- Ports are published in host mode on the node that runs the service (swarm cannot bind 127.0.0.1: the routing
  mesh publishes on every address): reach the UI through an SSH tunnel or a firewall, as the README says.
- The workers are a replicated service: `deploy.replicas`, and a stop grace period of SCALING_DRAIN_TIMEOUT, so a
  scale-down waits for the worker to drain (workers/serve.py) before swarm kills it.
- The autoscaler runs on a manager (only a manager may update a service) and scales the service's replicas.
- Services reach each other by DNS round robin (`endpoint_mode: dnsrr`) rather than a virtual IP; ports
  published in host mode do not need the routing mesh's VIP.
- The default network is an attachable overlay: `make swarm-deploy` runs the deployer on it with `docker run`.
- The stream is never written to disk: it holds the resolved secrets from .env.
"""

from __future__ import annotations

import json
import sys
from typing import Any

DROPPED = ("build", "depends_on", "restart", "profiles", "container_name")


def _port(port: dict[str, Any]) -> dict[str, Any]:
    return {"target": int(port["target"]), "published": int(port["published"]), "protocol": "tcp", "mode": "host"}


def swarm_stack(config: dict[str, Any], drain_timeout: str = "2h") -> dict[str, Any]:
    services = {}
    for name, service in config["services"].items():
        swarm = {
            key: value
            for key, value in service.items()
            if key not in DROPPED and not key.startswith("x-") and value is not None  # entrypoint: null
        }
        labels = {k: v for k, v in (swarm.pop("labels", None) or {}).items() if not k.startswith("com.docker.compose.")}
        if labels:  # Compose's own labels name a compose project: in a stack, the stack's namespace label does
            swarm["labels"] = labels
        for mount in swarm.get("volumes") or []:
            (mount.get("bind") or {}).pop("create_host_path", None)  # Compose's own key; swarm's schema refuses it
            for empty in ("bind", "volume"):
                if mount.get(empty) == {}:
                    mount.pop(empty)
        if "ports" in swarm:
            swarm["ports"] = [_port(port) for port in swarm["ports"]]
        deploy = swarm.pop("deploy", {}) or {}
        deploy.pop("resources", None)  # GPU reservations: swarm has generic resources instead (README)
        deploy["restart_policy"] = {"condition": "any", "delay": "3s"}
        # services find each other by DNS (round robin over the tasks' own addresses), not through a virtual IP:
        # the VIP needs the kernel's IPVS, which some engines lack (seen here: "no route to host" to postgres)
        deploy["endpoint_mode"] = "dnsrr"
        if name in ("cpu-worker", "gpu-worker"):
            deploy["mode"] = "replicated"
            deploy["replicas"] = 1
            swarm["stop_grace_period"] = drain_timeout
        if name == "autoscaler":
            deploy["placement"] = {"constraints": ["node.role == manager"]}
            swarm.setdefault("environment", {})["SCALING_BACKEND"] = "swarm"
        swarm["deploy"] = deploy
        services[name] = swarm
    networks = {name: {"driver": "overlay", "attachable": True} for name in config.get("networks") or {"default": {}}}
    volumes = {name: {} for name in config.get("volumes") or {}}
    return {"services": services, "networks": networks, "volumes": volumes}


def run_once(config: dict[str, Any], service: str, stack: str) -> int:
    """`docker run` a one-shot service (the deployer) on the stack's network and volume, as `docker compose run`
    would. Its environment travels in this process's environment (`-e NAME`), not on a command line."""
    import os
    import subprocess

    spec = config["services"][service]
    environment = {key: str(value) for key, value in (spec.get("environment") or {}).items() if value is not None}
    command = ["docker", "run", "--rm", "--network", f"{stack}_default"]
    for mount in spec.get("volumes") or []:
        if mount.get("type") == "volume":
            command += ["-v", f"{stack}_{mount['source']}:{mount['target']}"]
    for key in environment:
        command += ["-e", key]
    command += [spec["image"], *(spec.get("command") or [])]
    return subprocess.run(command, env={**os.environ, **environment}).returncode


def main() -> None:
    from services.autoscaling.settings import parse_duration

    config = json.load(sys.stdin)
    if len(sys.argv) == 4 and sys.argv[1] == "run":  # swarm_stack.py run SERVICE STACK
        raise SystemExit(run_once(config, sys.argv[2], sys.argv[3]))
    drain = (config["services"].get("autoscaler", {}).get("environment") or {}).get("SCALING_DRAIN_TIMEOUT") or "2h"
    json.dump(swarm_stack(config, f"{int(parse_duration(drain))}s"), sys.stdout, indent=1)


if __name__ == "__main__":
    main()
