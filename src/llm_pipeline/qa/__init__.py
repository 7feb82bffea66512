"""QA generation: generate.py (the stage's algorithm), requests.py (one request per chunk, journaled),
backends.py (the registry) with openai_backend.py and local_backend.py, extractive.py (offline), filters.py,
prompts/, schema.py, policy.py (the request-level retry table), checkpoint.py (the journal)."""

from llm_pipeline.qa.backends import QA_BACKENDS, resolve_backend
from llm_pipeline.qa.generate import JOURNAL_FILE, QAResult, generate_qa
from llm_pipeline.qa.requests import build_jobs

__all__ = ["JOURNAL_FILE", "QA_BACKENDS", "QAResult", "build_jobs", "generate_qa", "resolve_backend"]
