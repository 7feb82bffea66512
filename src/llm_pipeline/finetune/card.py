"""The adapter's model card (README.md in the adapter folder, as the Hub shows it): base, data lineage,
hyper-parameters, losses; and, once evaluation has run, the tuned-vs-base summary."""

from __future__ import annotations

from typing import Any


def model_card(summary: dict[str, Any], tuned_vs_base: dict[str, Any] | None = None) -> str:
    """`summary`: finetune.json's content; `tuned_vs_base`: the report's comparison (finalize adds it)."""
    lineage = summary["lineage"]
    losses = summary["losses"]
    lines = [
        "---",
        f"base_model: {summary['base_model']}",
        "library_name: peft",
        "tags: [lora, llm-pipeline]",
        "---",
        "",
        f"# LoRA adapter for {summary['base_model']}",
        "",
        f"Trained by llm-pipeline run `{lineage['run_id']}` (pipeline `{lineage['pipeline']}`) on the run's "
        "`train_pairs.jsonl`: the QA pairs that did not go into the benchmark.",
        "",
        "## Data lineage",
        "",
        f"- training pairs: `{lineage['train_pairs_fingerprint'][:16]}` ({summary['data']['train_examples']} "
        f"trained on, {summary['data']['eval_examples']} held out for eval loss)",
        f"- QA pairs stage fingerprint: `{lineage['qa_pairs_fingerprint'][:16]}`",
        f"- benchmark version {lineage['benchmark_version']}, fingerprint `{lineage['benchmark_fingerprint'][:16]}`",
        f"- training key `{summary['key']}` (checkpoints under it resume a crashed training)",
        "",
        "## Training",
        "",
        f"{summary['steps']} optimizer steps in {summary['seconds']} s"
        + (f" (resumed from step {summary['resumed_from_step']})" if summary["resumed_from_step"] else "")
        + f"; trainable parameters {summary['data']['trainable_params']:,} of {summary['data']['total_params']:,}.",
        "",
        "| loss | first | last |",
        "|---|---|---|",
        f"| train | {_fmt(losses['first_loss'])} | {_fmt(losses['last_loss'])} |",
        f"| eval (held out) | {_fmt(losses['first_eval_loss'])} | {_fmt(losses['last_eval_loss'])} |",
        "",
        "Hyper-parameters:",
        "",
        "```yaml",
        *[f"  {k}: {v}" for k, v in sorted(summary["hyperparameters"].items())],
        "```",
    ]
    if tuned_vs_base:
        lines += ["", "## Evaluation: tuned vs base (the run's benchmark)", "", "| metric | base | tuned | delta |"]
        lines.append("|---|---|---|---|")
        for metric, row in tuned_vs_base["overall"].items():
            lines.append(
                f"| {metric} | {_fmt(row['base'])} | {_fmt(row['tuned'])} | "
                f"{row['delta']:+.3f} [{row['low']:+.3f}, {row['high']:+.3f}] |"
            )
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from peft import AutoPeftModelForCausalLM",
        'model = AutoPeftModelForCausalLM.from_pretrained("<this folder>")',
        "```",
        "",
    ]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
