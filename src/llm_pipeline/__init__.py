"""llm-pipeline: domain documents in; fine-tuning QA data, a domain benchmark and a model evaluation report out."""

__version__ = "0.1.0"
