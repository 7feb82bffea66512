"""Long documents split into overlapping word windows, so every fact sits whole in at least one chunk."""

from __future__ import annotations

from dataclasses import dataclass

from llm_pipeline.text import UNSPACED, word_spans


@dataclass(frozen=True)
class Chunk:
    index: int
    count: int
    text: str


def chunk_text(text: str, size: int, overlap: int) -> list[Chunk]:
    """Windows of `size` words advancing by size - overlap; a text that fits is one chunk, unchanged.

    Words are whitespace-separated, and a chunk is its words joined by single spaces. In a text holding a script
    written without spaces (Chinese, Japanese, Thai: `text.UNSPACED`) each of its characters is a word
    (`text.word_count`), and a chunk is the stretch of the text from its first word to its last, as written: a
    split on whitespace found one "word" in a page of Chinese and sent the whole document as one chunk, however
    long, where a model's context may not hold it."""
    spaced = UNSPACED.search(text) is None
    words: list[str] = text.split() if spaced else []
    spans = [] if spaced else word_spans(text)
    count = len(words) if spaced else len(spans)
    if count <= size:
        return [Chunk(0, 1, text)]
    step = size - overlap
    starts = list(range(0, count - overlap, step))
    # The last window is full length, ending at the last word, rather than a stub of a few words.
    starts[-1] = max(0, min(starts[-1], count - size))
    if spaced:
        texts = [" ".join(words[s : s + size]) for s in starts]
    else:
        texts = [text[spans[s][0] : spans[min(s + size, count) - 1][1]] for s in starts]
    return [Chunk(i, len(starts), t) for i, t in enumerate(texts)]
