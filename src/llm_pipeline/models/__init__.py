"""Models, side by side: loading a causal LM (loading.py), batched generation (generation.py), sentence
embeddings (embeddings.py). Shared by QA generation, deduplication, the benchmark and evaluation."""

from llm_pipeline.models.loading import load_causal_lm, render_prompt

__all__ = ["load_causal_lm", "render_prompt"]
