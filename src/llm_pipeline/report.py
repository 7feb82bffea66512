"""The finalize stage's summary: summary.json (machine-readable) and report.md (what a person reads)."""

from __future__ import annotations

from typing import Any

from llm_pipeline.evaluation import BREAKDOWNS, HEADLINE_METRICS, scored_candidates


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _metric_cell(aggregate: dict[str, Any] | None) -> str:
    if not aggregate:
        return "–"
    return f"{aggregate['mean']:.3f} [{aggregate['ci_low']:.3f}, {aggregate['ci_high']:.3f}]"


def build_summary(
    manifest: dict[str, Any],
    evaluation: dict[str, Any],
    qa: dict[str, Any] | None = None,
    comparison: dict[str, Any] | None = None,
) -> dict[str, Any]:
    stages = manifest.get("stages", {})
    return {
        "qa_generation": qa or {},
        "comparison": {k: v for k, v in (comparison or {}).items() if k != "charts"},
        "pipeline": manifest["pipeline"],
        "run_id": manifest["run_id"],
        "config_hash": manifest["config_hash"],
        "code_version": manifest["code_version"],
        "started_at": manifest["started_at"],
        "stages": {
            name: {
                "status": s.get("status"),
                "duration_s": s.get("duration_s"),
                "cached": s.get("cached"),
                "counts": s.get("counts", {}),
            }
            for name, s in stages.items()
        },
        "evaluation": {
            c: (
                {"error": s["error"]}
                if "error" in s
                else {k: v["mean"] for k, v in s["overall"].items()}
                | {"robustness": s.get("robustness")}
                | ({"refused_items": s["refused"]["items"]} if s.get("refused") else {})
            )
            for c, s in evaluation.items()
        },
    }


# semantic dedup's rules that keep near-pairs apart: the count's key, the examples' key, why (`{n}`: the count)
_KEPT_APART = (
    (
        "set_apart_by_numbers",
        "set_apart_examples",
        "by their numbers (`dedup.semantic_numbers_must_agree`): {n:,} near-pairs in which each text states a number "
        "the other does not (a price, a power, a model number)",
    ),
    (
        "set_apart_by_length",
        "set_apart_by_length_examples",
        "by their lengths (`dedup.semantic_max_length_ratio`): {n:,} near-pairs in which one text is over {ratio}x as "
        "long as the other",
    ),
    (
        "set_apart_as_parts",
        "set_apart_as_parts_examples",
        "as parts of one file: {n:,} near-pairs of two parts of one long document (alike in topic and style, not "
        "copies)",
    ),
    (
        "set_apart_by_words",
        "set_apart_by_words_examples",
        "by their words (`dedup.semantic_min_shared_words`): {n:,} near-pairs whose texts have under {share} of "
        "their distinct words in common (two texts on one subject, not copies)",
    ),
)


def _kept_apart(run: dict[str, Any], count: str, examples: str, why: str) -> list[str]:
    """The report's lines for one of semantic dedup's rules that keep near-pairs apart: how many (`why`, with `{n}`),
    and the closest few."""
    if not (apart := run.get(count)):
        return []
    closest = ", ".join(f"`{e['a']}` / `{e['b']}` ({e['cosine']})" for e in run.get(examples, [])[:5])
    reason = why.format(n=apart)
    return ["", f"Kept apart {reason}, so neither was removed as a copy of the other; the closest: {closest}."]


def render_report(
    manifest: dict[str, Any],
    evaluation: dict[str, Any],
    examples: dict[str, Any] | list[dict[str, Any]],
    tracking: dict[str, Any],
    qa: dict[str, Any] | None = None,
    comparison: dict[str, Any] | None = None,
    charts: dict[str, str] | None = None,
    qa_cached: bool = False,
    tuned_vs_base: dict[str, Any] | None = None,
    judge: dict[str, Any] | None = None,
) -> str:
    """`examples`: a few duplicate clusters with their first members' texts, and every semantic removal with its
    pair and both similarities (the dedup stage writes them; a list of clusters in runs before that);
    `qa`: the QA stage's accounting (requests, tokens, cost); `qa_cached`: whether that stage was reused."""
    lines = [
        f"# {manifest['pipeline']}: run {manifest['run_id']}",
        "",
        f"Config hash `{manifest['config_hash']}`, code `{manifest['code_version']}`, "
        f"started {manifest['started_at']}.",
        *(tuned_lines(tuned_vs_base, judge) if tuned_vs_base else []),
        "",
        "## Stages",
        "",
        "| stage | status | seconds | cached | counts |",
        "|---|---|---|---|---|",
    ]
    for name, stage in manifest.get("stages", {}).items():
        counts = ", ".join(
            f"{k}={_fmt(v)}" for k, v in stage.get("counts", {}).items() if "." not in k or k.startswith("dedup.")
        )
        lines.append(
            f"| {name} | {stage.get('status')} | {_fmt(stage.get('duration_s'))} | "
            f"{'yes' if stage.get('cached') else 'no'} | {counts} |"
        )

    lines += input_lines(manifest)
    charts = charts or {}
    if "stage_timings" in charts:
        lines += ["", f"![stage timings]({charts['stage_timings']})"]
    if qa:
        lines += ["", "## QA generation: requests, tokens, cost", ""] + qa_cost_lines(qa, qa_cached)

    ok = scored_candidates(evaluation)
    lines += ["", "## Model comparison", "", "Means with 95 % bootstrap confidence intervals.", ""]
    metrics = [m for m in HEADLINE_METRICS if any(m in s["overall"] for s in ok.values())]
    if ok:
        lines += ["| candidate | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
        for name, s in ok.items():
            lines.append(f"| {name} | " + " | ".join(_metric_cell(s["overall"].get(m)) for m in metrics) + " |")
    if "metrics" in charts:
        lines += ["", f"![candidates on every metric]({charts['metrics']})"]
    lines += candidate_notes(evaluation)
    for breakdown in BREAKDOWNS:
        lines += ["", f"### By {breakdown}", ""]
        keys = sorted({k for s in ok.values() for k in s["by"][breakdown]})
        lines += ["| candidate | metric | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
        for name, s in ok.items():
            for metric in metrics:
                groups = s["by"][breakdown]
                if not any(metric in groups.get(k, {}) for k in keys):
                    continue
                cells = [_metric_cell(groups.get(k, {}).get(metric)) for k in keys]
                lines.append(f"| {name} | {metric} | " + " | ".join(cells) + " |")
    if judge:
        lines += judge_lines(judge)
    if comparison:
        lines += comparison_lines(comparison)
    if any(s.get("robustness") for s in ok.values()):
        lines += ["", "### Robustness (rougeL on variants / on their originals)", ""]
        for name, s in ok.items():
            lines.append(f"- {name}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in (s.get("robustness") or {}).items()))

    lines += [
        "",
        "## Deduplication: example clusters",
        "",
        "Judge these for false positives; every cluster is in `duplicate_clusters.jsonl`.",
        "",
    ]
    if "dedup" in charts:
        lines += [f"![deduplication]({charts['dedup']})", ""]
    if isinstance(examples, list):  # a cached stage output from before semantic removals were listed
        examples = {"clusters": examples, "semantic_removals": []}
    for cluster in examples["clusters"]:
        lines.append(f"- **{cluster['method']}** (similarity {cluster['similarity']}), kept `{cluster['kept']}`:")
        for member, text in cluster["texts"].items():
            lines.append(f"  - `{member}`: {' '.join(text[:160].split())}")  # one line: a list item's
    if not examples["clusters"]:
        lines.append("No duplicates found.")
    if run := examples.get("semantic"):
        lines += [
            "",
            f"Semantic pass: {run['documents']:,} documents compared with `{run['embedding_backend']}` embeddings "
            f"of `{run['embedding_model']}` at cosine >= {run['cosine_threshold']} "
            f"(`dedup.embedding_backend`, `dedup.semantic_threshold`); pairs found: `{run['action']}`.",
        ]
        ratio, share = run.get("max_length_ratio", 2), run.get("min_shared_words", 0.5)
        for count, examples_key, why in _KEPT_APART:
            why = why.replace("{ratio}", str(ratio)).replace("{share}", str(share))
            lines += _kept_apart(run, count, examples_key, why)
    semantic = examples.get("semantic_removals") or []
    judged = any("judge" in r for r in semantic)
    what = "removals" if all(r.get("removed_from_output", True) for r in semantic) else "near-pairs to review (kept)"
    if judged:
        removed = sum(1 for r in semantic if r.get("removed_from_output"))
        what = f"pairs judged by the LLM judge ({removed} removed as duplicates, {len(semantic) - removed} kept)"
    if semantic:
        lines += [
            "",
            f"### Semantic {what} ({len(semantic)}; every one, with both texts, in `cluster_examples.json`)",
            "",
            "A low lexical Jaccard next to a high cosine is the case to judge: same topic, or the same text?",
            "",
            "| document | closest kept document | cosine | lexical Jaccard | judge |"
            if judged
            else "| removed | as a copy of | cosine | lexical Jaccard |",
            "|---|---|---|---|" + ("---|" if judged else ""),
        ]
        lines += [
            f"| `{r['removed']}` | `{r['kept']}` | {r['cosine']} | {r['jaccard']} |" + (_verdict(r) if judged else "")
            for r in sorted(semantic, key=lambda r: r["jaccard"])[:SEMANTIC_ROWS]
        ]

    lines += ["", "## Tracking", ""]
    lines.append(
        f"W&B mode: {tracking.get('mode', 'disabled')}"
        + (f"; sync later with `{tracking['sync_command']}`" if tracking.get("sync_command") else "")
        + (f"; run {tracking['url']}" if tracking.get("url") else "")
    )
    lines += ["", "## Files", ""] + [f"- `{f}`" for f in sorted(manifest.get("files", []))]
    return "\n".join(lines) + "\n"


SEMANTIC_ROWS = 20  # semantic removals in the report, lowest lexical Jaccard first


def candidate_notes(evaluation: dict[str, Any]) -> list[str]:
    """A line for each candidate that failed, and for each whose server refused some items (answered empty)."""
    lines = []
    for name, s in evaluation.items():
        if "error" in s:
            lines.append(f"\n**{name} failed**: {s['error']}")
        elif refused := s.get("refused"):
            why = "; ".join(f"{r['reason']} ({r['items']})" for r in refused["reasons"])
            lines.append(
                f"\n**{name}: {refused['items']} of {refused['of']} items refused by its server**, each answered "
                f"empty and scored as wrong: {why}"
            )
    return lines


def _verdict(row: dict[str, Any]) -> str:
    """The judge's cell: its verdict, and why where it kept the document."""
    judge = row.get("judge") or {"verdict": "not judged", "reason": ""}
    reason = " ".join(str(judge.get("reason", "")).split())[:120].replace("|", "/")
    return f" {judge['verdict']}" + (f": {reason}" if reason and judge["verdict"] != "duplicate" else "") + " |"


INPUT_ROWS = 30  # files shown in the report; every one is in the manifest (up to 1,000)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def file_table(files: list[dict[str, Any]], rows: int) -> list[str]:
    """The loader's per-file summary as a markdown table (report.md and the load stage's Prefect artifact)."""
    lines = ["| file | status | format | records | documents | quarantined | why |", "|---" * 7 + "|"]
    for f in files[:rows]:
        fmt = (f.get("format") or "") + (f" ({f['compression']})" if f.get("compression") else "")
        reason = (f.get("reason") or "").replace("|", "/")[:160]
        lines.append(
            f"| `{f['path']}` | {f['status']} | {fmt} | {f['records']} | {f['documents']} | {f['quarantined']} | "
            f"{reason} |"
        )
    return lines


def input_lines(manifest: dict[str, Any]) -> list[str]:
    """The inputs, file by file: what each gave, and every file skipped or failed with its reason (those first)."""
    stages = manifest.get("stages", {}).values()
    counts = next((s["counts"] for s in stages if "sources.files" in s.get("counts", {})), {})  # the loader's
    files = counts.get("sources.files")
    if not files:
        return []
    lines = [
        "",
        "## Inputs",
        "",
        f"{_count(counts.get('files', len(files)), 'file')}: {counts.get('files.loaded', 0)} read, "
        f"{counts.get('files.skipped', 0)} skipped, {counts.get('files.failed', 0)} failed; "
        f"{counts.get('documents', 0)} documents from {counts.get('records_seen', 0)} records, "
        f"{counts.get('rejected', 0)} quarantined (`rejects.jsonl`).",
    ]
    repaired = {k.split(".", 1)[1]: v for k, v in counts.items() if k.startswith("repaired.")}
    if repaired:
        lines.append("Repaired in place: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in repaired.items()) + ".")
    if counts.get("files.failed") or counts.get("files.skipped"):
        lines.append("")
        lines.append(
            f"**Warning: {counts.get('files.failed', 0) + counts.get('files.skipped', 0)} files gave nothing.**"
        )
        if any(str(f.get("reason", "")).startswith("not a supported format") for f in files):
            lines.append(
                "Files of no format the loader knows are skipped; to read text files of any name as plain text, "
                "list them in `data.plain_text` (globs, e.g. `['*.log']`)."
            )
    lines += [""] + file_table(files, INPUT_ROWS)
    if len(files) > INPUT_ROWS:
        lines.append(f"\n{len(files) - INPUT_ROWS} more files in the manifest's `sources.files`.")
    return lines


def qa_cost_lines(qa: dict[str, Any], cached: bool = False) -> list[str]:
    """`cached`: the stage was reused whole from an earlier run, so this run sent nothing."""

    def dollars(value: float | None) -> str:
        return "no price configured (qa.prices)" if value is None else f"${value:,.4f}"

    requests, tokens, sent = qa.get("requests", {}), qa.get("tokens", {}), qa.get("tokens_sent_this_run", {})
    outcomes = qa.get("outcomes_this_run", {})
    if cached:
        requests = {**requests, "sent": 0, "http_requests": 0, "reused": requests.get("total", 0)}
        sent, outcomes = {"prompt_tokens": 0, "completion_tokens": 0}, {}
        qa = {**qa, "cost_sent_this_run_usd": 0.0 if qa.get("cost_usd") is not None else None}
    estimated = " (estimated from characters: the server reported no usage)" if tokens.get("estimated") else ""
    return [
        f"Backend `{qa.get('backend')}`, model `{qa.get('model')}`, prompt `{qa.get('prompt_version')}`.",
        "",
        "| | requests | prompt tokens | completion tokens | cost |",
        "|---|---|---|---|---|",
        f"| this dataset | {requests.get('total', 0)} | {tokens.get('prompt_tokens', 0):,} | "
        f"{tokens.get('completion_tokens', 0):,} | {dollars(qa.get('cost_usd'))} |",
        f"| sent by this run | {requests.get('sent', 0)} | {sent.get('prompt_tokens', 0):,} | "
        f"{sent.get('completion_tokens', 0):,} | {dollars(qa.get('cost_sent_this_run_usd'))} |",
        "",
        f"Reused from the journal: {requests.get('reused', 0)} requests; quarantined: "
        f"{requests.get('quarantined', 0)}{estimated}.",
        *(
            [
                "",
                f"**QA {qa['status']}**: {qa['budget'].get('requests_not_sent', 0)} requests not sent; this run "
                f"spent {dollars(qa['budget'].get('spent_usd'))}, {qa['budget'].get('spent_tokens', 0):,} tokens. "
                "A rerun with a higher cap sends only those (the journal keeps the rest).",
            ]
            if str(qa.get("status", "complete")).startswith("partial") and not cached
            else []
        ),
        *(
            [
                "",
                f"HTTP requests sent by this run, every try of every stage attempt: "
                f"{requests.get('http_requests', 0)} ("
                + ", ".join(f"{name.replace('_', ' ')} {n}" for name, n in sorted(outcomes.items()))
                + ").",
            ]
            if outcomes
            else []
        ),
        *(
            [
                "",
                "**The server did not keep up**: requests that got no reply within `qa.request_timeout_s` cut the "
                f"requests in flight to one at a time {requests['in_flight_cuts']} times (then back up as replies "
                f"came; {requests['in_flight_lowest']} at the lowest, `qa.concurrency` at the most). A server that "
                "answers one request at a time (llama.cpp, Ollama by default) wants a lower `qa.concurrency`, or a "
                "longer timeout.",
            ]
            if requests.get("in_flight_cuts") and not cached
            else []
        ),
        *(
            [
                "",
                "**The model's context is small**: the server refused "
                f"{_count(outcomes.get('context_refused', 0), 'request')} whose prompt and `qa.max_tokens` "
                f"({requests.get('max_tokens', '?')}) did not fit, stating "
                + " and ".join(
                    f"{label} {requests[name]:,} tokens"
                    for name, label in (("context_tokens", "a context of"), ("completion_cap", "a reply of at most"))
                    if requests.get(name)
                )
                + "; each was sent again at once asking for what fit, and later requests asked for no more. "
                "Replies that need more room want the model served with a longer context, or a lower "
                "`qa.chunk_words`.",
            ]
            if (requests.get("context_tokens") or requests.get("completion_cap")) and not cached
            else []
        ),
    ]


def _rate_cell(rate: dict[str, float] | None) -> str:
    if not rate:
        return "n/a"
    return f"{rate['rate'] * 100:.0f} % [{rate['low'] * 100:.0f}, {rate['high'] * 100:.0f}]"


def judge_lines(judge: dict[str, Any]) -> list[str]:
    """The LLM judge: pointwise means per candidate, pairwise rates with the order-disagreement rate, its agreement
    with the lexical metrics, what failed and what it cost."""
    lines = [
        "",
        f"## LLM judge ({judge['model']}, prompts {judge['prompt_version']})",
        "",
        "Pointwise: each answer scored 1-5 on correct (against the reference), grounded (in the context) and "
        "complete; means with 95 % bootstrap intervals.",
        "",
    ]
    failed = judge.get("failed") or {}
    if not judge.get("pointwise") and not any(p.get("items") for p in (judge.get("pairwise") or {}).values()):
        # nothing scored: no empty table and no agreement over nothing, but why, where the eye lands
        why = ", ".join(f"{k} {v}" for k, v in failed.items()) or "none answered"
        return [
            *lines[:3],
            f"**The judge scored no answer**: {judge['requests']} requests, failed (never scored): {why}. "
            "Each failure, with the judge's last reply, is in `judgements.jsonl`; a judge that cannot keep to the "
            "JSON asked for needs a larger model (or its own prompt, `evaluation.judge.prompt_dir`).",
        ]
    lines += [
        "| candidate | judged | correct | grounded | complete | score |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in judge.get("pointwise", {}).items():
        cells = [
            f"{s[k]['mean']:.2f} [{s[k]['low']:.2f}, {s[k]['high']:.2f}]"
            for k in ("correct", "grounded", "complete", "score")
        ]
        lines.append(f"| {name} | {s['judged']} | " + " | ".join(cells) + " |")
    if judge.get("pairwise"):
        lines += [
            "",
            "Pairwise: each item asked in both orders; a preference counts only when both orders agree, otherwise "
            "it is a tie. Order disagreement is the share of items whose two orders disagree: the judge's "
            "position bias (a judge that always prefers the first answer disagrees on every item and yields ties).",
            "",
            "| comparison | items | win | tie | loss | order disagreement |",
            "|---|---|---|---|---|---|",
        ]
        for label, p in judge["pairwise"].items():
            lines.append(
                f"| {label} | {p['items']} | {_rate_cell(p['win'])} | {_rate_cell(p['tie'])} | "
                f"{_rate_cell(p['loss'])} | {_rate_cell(p['order_disagreement'])} |"
            )
    agreement = judge.get("agreement", {})
    lines += [
        "",
        f"Agreement with the metrics (Spearman over {agreement.get('items', 0)} judged answers): exact match "
        f"{_fmt(agreement.get('spearman_exact_match'))}, ROUGE-L {_fmt(agreement.get('spearman_rougeL'))}. "
        "Low agreement is where the judge sees what the string metrics cannot (a right answer in other words).",
    ]
    cost = judge.get("cost_usd_this_run")
    lines.append(
        f"\n{judge['requests']} judge requests; sent this run {judge['sent_this_run']} "
        "(the rest were in the journal, or asked the same as another)"
        + (f", US$ {cost:.4f}" if cost is not None else "")
        + (f"; {judge['refused_by_cap']} not sent: the judge's cost cap" if judge.get("refused_by_cap") else "")
        + (f"; failed (never scored): {', '.join(f'{k} {v}' for k, v in failed.items())}" if failed else "")
        + "."
    )
    return lines


def tuned_lines(tuned: dict[str, Any], judge: dict[str, Any] | None = None) -> list[str]:
    """The report's lead with fine-tuning on: the tuned model against its base on every metric, overall and per
    category and difficulty; delta = tuned - base with a 95 % paired bootstrap interval; a regression is a delta
    whose whole interval is below 0."""
    lines = [
        "",
        f"## Tuned vs base ({tuned['items']} benchmark items)",
        "",
        "Delta = tuned - base, mean over the same items, with a 95 % paired bootstrap interval.",
        "",
    ]
    regressions = tuned.get("regressions", [])
    lines.append(f"**Regressions**: {', '.join(regressions)}" if regressions else "No regression beyond the interval.")
    lines += ["", "| metric | base | tuned | delta [95 % CI] |", "|---|---|---|---|"]

    def delta(r: dict[str, Any]) -> str:
        flag = " **regression**" if r["regression"] else ""
        return f"{r['delta']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}]{flag}"

    lines += [f"| {m} | {_fmt(r['base'])} | {_fmt(r['tuned'])} | {delta(r)} |" for m, r in tuned["overall"].items()]
    head_to_head = (judge or {}).get("pairwise", {}).get("tuned vs base")
    if head_to_head:
        lines += [
            "",
            f"LLM judge, head to head over {head_to_head['items']} items (both orders): tuned wins "
            f"{_rate_cell(head_to_head['win'])}, ties {_rate_cell(head_to_head['tie'])}, loses "
            f"{_rate_cell(head_to_head['loss'])}; order disagreement {_rate_cell(head_to_head['order_disagreement'])}.",
        ]
    metrics = list(tuned["overall"])
    for breakdown, groups in tuned.get("by", {}).items():
        lines += ["", f"Delta by {breakdown} (items in brackets):", ""]
        lines += ["| " + breakdown + " | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
        for group, rows in groups.items():
            n = next(iter(rows.values()))["n"]
            cells = [delta(rows[m]) if m in rows else "n/a" for m in metrics]
            lines.append(f"| {group} ({n}) | " + " | ".join(cells) + " |")
    return lines


def comparison_lines(comparison: dict[str, Any]) -> list[str]:
    metric = comparison.get("metric", "rougeL")
    lines = ["", f"### Best model per category ({metric})", "", "| category | best | mean |", "|---|---|---|"]
    for category, best in comparison.get("best_per_category", {}).items():
        lines.append(f"| {category} | {best['candidate']} | {best['mean']:.3f} |")
    for name, file in comparison.get("charts", {}).items():
        lines += ["", f"![{metric} {name.replace('_', ' ')}]({file})"]
    previous = comparison.get("previous_run")
    lines += ["", "### Change since the previous run", ""]
    if not previous:
        lines.append("No earlier completed run of this pipeline to compare with.")
        return lines
    regressions = comparison.get("regressions", [])
    lines.append(
        f"Against run `{previous}`. "
        + (
            f"**Regressions beyond the confidence interval: {', '.join(regressions)}.**"
            if regressions
            else "No regression beyond the confidence interval."
        )
    )
    lines += ["", "| candidate | metric | before | now | change | |", "|---|---|---|---|---|---|"]
    for name, rows in comparison.get("changes", {}).items():
        for metric_name, row in rows.items():
            flag = "regression" if row["regression"] else "improvement" if row["improvement"] else ""
            lines.append(
                f"| {name} | {metric_name} | {row['before']:.3f} | {row['now']:.3f} | {row['delta']:+.3f} | {flag} |"
            )
    return lines
