"""LoRA supervised fine-tuning (peft) with transformers' Trainer, resumable after a crash.

Checkpoints live under `<checkpoint_dir>/<training key>/`, where the key hashes everything that decides the
weights (base model, training data, hyper-parameters), not the run: a flow run crashed mid-training (a killed
worker, an out-of-memory kill) is resubmitted as a new run with a new run folder, and its training resumes from the
last checkpoint, the step count continuing, instead of starting over. The adapter, the tokenizer and the model card
go to the run folder's `adapter/`.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_pipeline.config import FinetuneConfig
from llm_pipeline.finetune.data import TrainingSet, build_examples, pack, split_held_out
from llm_pipeline.logging import get_logger
from llm_pipeline.progress import ProgressCounter
from llm_pipeline.records import Document, QAPair

log = get_logger("finetune")

# Settings that do not change the trained weights: left out of the training key.
_NOT_IN_KEY = {"enabled", "device", "checkpoint_dir", "merge", "eval_max_new_tokens", "eval_batch_size", "save_steps"}


@dataclass
class FinetuneResult:
    base_model: str
    adapter_dir: Path
    key: str
    steps: int
    resumed_from_step: int
    data: dict[str, int]
    history: list[dict[str, float]] = field(default_factory=list)  # Trainer's log: loss, eval_loss, lr by step
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    train_seconds: float = 0.0  # the Trainer's own runtime (this process's share when resumed)
    tokens_seen: int = 0  # non-padding tokens trained on, over every epoch (from the checkpoint's count on resume)
    merged_dir: Path | None = None

    def losses(self) -> dict[str, float | None]:
        train = [h["loss"] for h in self.history if "loss" in h]
        evals = [h["eval_loss"] for h in self.history if "eval_loss" in h]
        return {
            "first_loss": train[0] if train else None,
            "last_loss": train[-1] if train else None,
            "first_eval_loss": evals[0] if evals else None,
            "last_eval_loss": evals[-1] if evals else None,
        }


def training_key(config: FinetuneConfig, data_fingerprint: str) -> str:
    settings = {k: v for k, v in config.model_dump(mode="json").items() if k not in _NOT_IN_KEY}
    payload = json.dumps({"settings": settings, "data": data_fingerprint}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _use_bf16(setting: str, device: str) -> bool:
    import torch

    if setting == "off" or not device.startswith("cuda"):
        return False
    return setting == "on" or torch.cuda.is_bf16_supported()


class _Rows:
    """The examples as the Trainer's dataset: a list of dicts the collator pads."""

    def __init__(self, examples: list[Any]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        e = self.examples[index]
        return {"input_ids": e.input_ids, "labels": e.labels, "attention_mask": [1] * len(e.input_ids)}


def finetune(
    config: FinetuneConfig,
    pairs: list[QAPair],
    documents: list[Document],
    adapter_dir: Path,
    checkpoint_root: Path,
    data_fingerprint: str,
) -> FinetuneResult:
    """Train a LoRA adapter on `pairs`; resume from the newest checkpoint of the same training key if any."""
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, PrinterCallback, Trainer, TrainerCallback, TrainingArguments
    from transformers.trainer_utils import get_last_checkpoint

    from llm_pipeline.models.loading import load_causal_lm, resolve_device

    assert config.base_model  # the config validator insists when enabled
    started = time.perf_counter()
    device = resolve_device(config.device)
    bf16 = _use_bf16(config.bf16, device)
    model, tokenizer, device = load_causal_lm(config.base_model, device, "bfloat16" if bf16 else "float32")
    tokenizer.padding_side = "right"

    examples, left_out = build_examples(pairs, documents, tokenizer, config.max_length)
    train, held_out = split_held_out(examples, config.eval_fraction, config.seed)
    data = TrainingSet(train, held_out, left_out)
    if not train:
        from llm_pipeline.errors import PipelineError

        raise PipelineError(f"finetune: no training example left of {len(pairs)} train pairs ({dict(left_out)})")
    if config.packing:
        train = pack(train, config.max_length)

    key = training_key(config, data_fingerprint)
    checkpoints = checkpoint_root / key
    checkpoints.mkdir(parents=True, exist_ok=True)
    last = get_last_checkpoint(str(checkpoints))
    resumed_from = _step_of(last) if last else 0

    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_modules,
        task_type="CAUSAL_LM",
    )
    model.train()
    if config.gradient_checkpointing:
        model.enable_input_require_grads()
    model = get_peft_model(model, lora)
    trainable, total = model.get_nb_trainable_parameters()

    args = TrainingArguments(
        output_dir=str(checkpoints),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,  # a float below 1: a share of the total steps
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        logging_steps=1,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        eval_strategy="steps" if held_out else "no",
        eval_steps=config.save_steps,
        seed=config.seed,
        data_seed=config.seed,
        bf16=bf16,
        activation_checkpointing=config.gradient_checkpointing,
        use_cpu=device == "cpu",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding",  # tokens/s counts real tokens, not padding
    )

    class Progress(TrainerCallback):  # the run's log and progress artifact show training as it goes
        counter: ProgressCounter | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self.counter = ProgressCounter(max(0, state.max_steps - state.global_step), "training the adapter")
            self.counter.__enter__()

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if self.counter is not None:
                self.counter.advance()

        def on_train_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            if self.counter is not None:
                self.counter.__exit__(None, None, None)
                self.counter = None

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **_: Any) -> None:
            if logs and ("loss" in logs or "eval_loss" in logs):
                wanted = ("loss", "eval_loss", "learning_rate")
                values = {k: round(float(v), 5) for k, v in logs.items() if k in wanted}
                log.info("finetune_step", step=state.global_step, of=state.max_steps, **values)

    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=_Rows(train),
        eval_dataset=_Rows(held_out) if held_out else None,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100),
        callbacks=[Progress()],
    )
    trainer.remove_callback(PrinterCallback)  # its print() of every log line: the Progress events say it, as JSON
    log.info(
        "finetune_started",
        base=config.base_model,
        key=key,
        device=device,
        bf16=bf16,
        trainable_params=trainable,
        total_params=total,
        resume_from_step=resumed_from,
        **data.counts(),
    )
    output = trainer.train(resume_from_checkpoint=last)
    if held_out:
        trainer.evaluate()
    history = [
        {k: float(v) for k, v in entry.items() if isinstance(v, int | float) and not math.isnan(float(v))}
        for entry in trainer.state.log_history
    ]

    adapter_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(adapter_dir))
    tokenizer.padding_side = "left"  # as the loader sets it for generation
    tokenizer.save_pretrained(str(adapter_dir))
    merged_dir = None
    if config.merge:
        merged_dir = adapter_dir / "merged"  # inside the declared folder: a cached run links it too
        merged = model.merge_and_unload()
        merged.save_pretrained(str(merged_dir))
        tokenizer.save_pretrained(str(merged_dir))
    result = FinetuneResult(
        base_model=config.base_model,
        adapter_dir=adapter_dir,
        key=key,
        steps=trainer.state.global_step,
        resumed_from_step=resumed_from,
        data={**data.counts(), "trainable_params": trainable, "total_params": total},
        history=history,
        hyperparameters={k: v for k, v in config.model_dump(mode="json").items() if k not in _NOT_IN_KEY},
        seconds=round(time.perf_counter() - started, 3),
        train_seconds=round(float(output.metrics.get("train_runtime", 0.0)), 3),
        tokens_seen=int(trainer.state.num_input_tokens_seen or 0),
        merged_dir=merged_dir,
    )
    log.info("finetune_completed", steps=result.steps, seconds=result.seconds, **result.losses())
    return result


def _step_of(checkpoint: str) -> int:
    return int(Path(checkpoint).name.rsplit("-", 1)[-1])
