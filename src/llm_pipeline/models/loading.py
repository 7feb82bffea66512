"""Causal language models from a hub name or a local folder, loaded one way for every stage that generates.

QA generation (qa/local_backend.py) and evaluation (evaluation/candidates.py) both load through
`load_causal_lm`: device and dtype resolved (CUDA and bf16 where available), left padding for batched
generation, a pad token where the tokenizer has none, and a ModelLoadError the retry policy knows.
"""

from __future__ import annotations

from typing import Any

from llm_pipeline.errors import ModelLoadError


def resolve_device(device: str) -> str:
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype != "auto":
        return getattr(torch, dtype)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_causal_lm(name: str, device: str = "auto", dtype: str = "auto") -> tuple[Any, Any, str]:
    """(model, tokenizer, device) for a hub name or a local folder; ModelLoadError when it cannot be loaded."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = resolve_device(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=resolve_dtype(dtype, resolved))
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load model {name!r}: {exc}") from exc
    model.to(resolved).eval()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return model, tokenizer, resolved


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join(lines) + "\n\nAssistant:"
