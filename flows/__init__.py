"""Prefect orchestration for llm-pipeline: flows, tasks, retries, caching and deployments. No domain logic."""

import os

# Library events (stdlib logger `llm_pipeline`) go to the Prefect UI's run logs too. Must be set before Prefect
# configures logging, which happens on first import.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "llm_pipeline")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
