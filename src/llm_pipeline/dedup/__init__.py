"""Deduplication: workflow.py (identify, then remove, by method), methods.py (the registry), one file per
method (exact.py, minhash.py, semantic.py), clusters.py (pairs to clusters, the kept member), remove.py."""

from llm_pipeline.dedup.methods import DEDUP_METHODS
from llm_pipeline.dedup.remove import remove_duplicates
from llm_pipeline.dedup.workflow import DedupResult, deduplicate

__all__ = ["DEDUP_METHODS", "DedupResult", "deduplicate", "remove_duplicates"]
