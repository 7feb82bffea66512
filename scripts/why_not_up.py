"""Why `make up` failed: each service that is not running and healthy, the cause where the log names a known
one (with what to do), else the end of its log. Standard library only: `make up` needs no virtualenv.

    python3 scripts/why_not_up.py docker compose --env-file .env -f docker-compose.yml ...
"""

from __future__ import annotations

import json
import subprocess
import sys

# (what the log says, what it means and what to do), the first that matches a line wins. Only causes a line
# names beyond doubt: a log holds harmless errors too, and a wrong cause is worse than the log's tail.
KNOWN_CAUSES = [
    (
        "password authentication failed for user",
        "the database volume (pgdata) was created with another POSTGRES_PASSWORD than the one in the env file "
        "now (Postgres sets it only when the volume is new). Put that password back in the env file, or start "
        "with an empty database, losing every run's history: `make clean`, then `make up`.",
    ),
    (
        "no space left on device",
        "a disk is full (the Docker data root or a volume): free space (`docker system df`, "
        "`docker builder prune`), then `make up`.",
    ),
]
LOG_LINES = 15


def services(compose: list[str]) -> list[dict]:
    listed = subprocess.run([*compose, "ps", "-a", "--format", "json"], capture_output=True, text=True, check=False)
    text = listed.stdout.strip()
    if not text:
        return []
    if text.startswith("["):  # older Compose prints one array, newer one object a line
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def unwell(service: dict) -> bool:
    if service.get("State") != "running":
        return not (service.get("State") == "exited" and service.get("ExitCode") == 0)
    return service.get("Health") not in ("", "healthy", None)


def main(compose: list[str]) -> int:
    listed = services(compose)
    waiting = [s.get("Service", "?") for s in listed if s.get("State") == "created"]
    found = [s for s in listed if unwell(s) and s.get("State") != "created"]
    if not found:
        print("why-not-up: every service that started is running (see the error above)", file=sys.stderr)
    for service in found:
        name = service.get("Service", "?")
        state = service.get("State", "?") + (f", {service['Health']}" if service.get("Health") else "")
        logs = subprocess.run(
            [*compose, "logs", "--no-color", "--no-log-prefix", "--tail", "400", name],
            capture_output=True,
            text=True,
            check=False,
        )
        lines = (logs.stdout + logs.stderr).splitlines()
        # the first cause listed, at its latest line
        cause = next(((line, hint) for pattern, hint in KNOWN_CAUSES for line in reversed(lines)
                      if pattern in line.lower()), None)  # fmt: skip
        print(f"\nwhy-not-up: {name} is {state}", file=sys.stderr)
        if cause:
            line, hint = cause
            print(f"  its log: {line.strip()[:300]}", file=sys.stderr)
            print(f"  cause: {hint}", file=sys.stderr)
        else:
            print(f"  the last {LOG_LINES} lines of its log (`make logs SERVICE={name}` for all):", file=sys.stderr)
            for line in lines[-LOG_LINES:]:
                print(f"    {line[:300]}", file=sys.stderr)
    if waiting:
        print(f"\nwhy-not-up: not started, waiting on the above: {', '.join(sorted(waiting))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    command = sys.argv[1:] or ["docker", "compose"]
    while command and "=" in command[0] and not command[0].startswith("-"):  # the Makefile's `VAR=value docker`
        command.pop(0)
    sys.exit(main(command))
