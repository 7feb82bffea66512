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


def load_causal_lm(
    name: str,
    device: str = "auto",
    dtype: str = "auto",
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[str, str] | None = None,
    offload_folder: str | None = None,
) -> tuple[Any, Any, str]:
    """(model, tokenizer, device) for a hub name or a local folder; ModelLoadError when it cannot be loaded.

    `device_map` (`auto`, `balanced`, `sequential`, or a module -> device mapping), with `max_memory` per device
    ({0: "70GiB", 1: "70GiB", "cpu": "200GiB"}): a model larger than one GPU is split over the host's GPUs, then
    CPU memory, then disk (`offload_folder`), by accelerate; the returned device is where inputs go (the input
    embeddings' device)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = resolve_device(device)
    split: dict[str, Any] = {}
    if device_map is not None:
        split = {"device_map": device_map, "max_memory": _memory_keys(max_memory), "offload_folder": offload_folder}
        split = {k: v for k, v in split.items() if v is not None}
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=resolve_dtype(dtype, resolved), **split)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load model {name!r}: {offline_hint(name) or exc}") from exc
    if device_map is None:
        model.to(resolved)
    else:
        first = model.get_input_embeddings().weight.device
        resolved = "cpu" if first.type == "meta" else str(first)  # offloaded embeddings: inputs stay on CPU
    model.eval()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return model, tokenizer, resolved


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE forbids downloads now (read at call time: huggingface_hub reads it at import)."""
    import os

    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def offline_hint(name: str) -> str | None:
    """Why a hub model cannot load where downloads are off, naming the setting; None where that is not the case."""
    import os
    from pathlib import Path

    if Path(name).exists() or not hub_offline():
        return None
    cache = os.environ.get("HF_HOME") or "~/.cache/huggingface"
    return (
        f"it is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE=1 forbids downloading it: "
        "run `make models` (the stack) or set HF_HUB_OFFLINE=0 (.env, or the environment) to let it download"
    )


def load_configured(name: str, settings: Any) -> tuple[Any, Any, str]:
    """`load_causal_lm` with the placement settings an `hf` candidate and the local QA backend share (device,
    dtype, device_map, max_memory, offload_folder)."""
    offload = settings.offload_folder
    return load_causal_lm(
        name,
        settings.device,
        settings.dtype,
        device_map=settings.device_map,
        max_memory=settings.max_memory,
        offload_folder=str(offload) if offload else None,
    )


def _memory_keys(max_memory: dict[str, str] | None) -> dict[Any, str] | None:
    """YAML keys are strings: GPU indices ("0") back to ints, as accelerate wants them."""
    if max_memory is None:
        return None
    return {int(k) if str(k).isdigit() else k: v for k, v in max_memory.items()}


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join(lines) + "\n\nAssistant:"
