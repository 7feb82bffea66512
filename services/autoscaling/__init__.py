"""The autoscaler (issue 17): workers that follow the work. policy.py decides, from a pool's demand and its
workers, how many workers it should have (a pure function over a timeline); settings.py reads the spec's keys
from the environment. The service that reads the Prefect API and scales through the Docker Engine API comes next
(issue 17 is open: see its notes)."""
