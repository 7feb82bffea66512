"""The autoscaler (issue 17): workers that follow the work. policy.py decides, from a pool's demand and its
workers, how many workers it should have (a pure function over a timeline); settings.py reads the spec's keys
from the environment; demand.py reads a pool's demand from the Prefect API; replicas.py starts and drains worker
containers through the Docker Engine API; service.py is the loop that ties them (`python -m services.autoscaling`,
the stack's `autoscaler` service)."""
