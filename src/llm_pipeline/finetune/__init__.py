"""Supervised fine-tuning with LoRA on the pipeline's training pairs (data.py: examples; train.py: the Trainer run,
resumable; card.py: the model card)."""

from llm_pipeline.finetune.card import model_card
from llm_pipeline.finetune.train import FinetuneResult, finetune, training_key

__all__ = ["FinetuneResult", "finetune", "model_card", "training_key"]
