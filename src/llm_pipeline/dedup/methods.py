"""The registry of dedup methods: each finds duplicate clusters among documents; removing them is remove.py's.

A method is a function `(documents, config: DedupConfig) -> list[DuplicateCluster]`, registered by name with
`@DEDUP_METHODS.register(name)` (exact.py, minhash.py, semantic.py) or from a user's package (llm_pipeline.plugins).
`hybrid` is not a method but a sequence of them (HYBRID), each run on what the one before kept.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from llm_pipeline.plugins import Registry
from llm_pipeline.records import Document, DuplicateCluster

if TYPE_CHECKING:
    from llm_pipeline.config import DedupConfig

DedupMethod = Callable[[list[Document], "DedupConfig"], list[DuplicateCluster]]

DEDUP_METHODS: Registry[DedupMethod] = Registry(
    "dedup method",
    "llm_pipeline.dedup_methods",
    builtins=("llm_pipeline.dedup.exact", "llm_pipeline.dedup.minhash", "llm_pipeline.dedup.semantic"),
)
HYBRID = ("exact", "minhash", "semantic")  # cheapest first, so each costlier method sees fewer documents


def method_sequence(method: str) -> tuple[str, ...]:
    return HYBRID if method == "hybrid" else (method,)
