"""Long documents split into overlapping word windows, so every fact sits whole in at least one chunk."""

from __future__ import annotations

import re
from dataclasses import dataclass

from llm_pipeline.text import UNSPACED, word_spans

_WORD = re.compile(r"\S+")  # a word of spaced text: what str.split finds (re's \s is str.isspace, every code point)


@dataclass(frozen=True)
class Chunk:
    index: int
    count: int
    text: str
    start: int = 0  # where in the document's text the chunk's first word is
    end: int | None = None  # and where its last word ends (None: the text's end)


def chunk_text(text: str, size: int, overlap: int) -> list[Chunk]:
    """Windows of `size` words advancing by size - overlap; a text that fits is one chunk, unchanged.

    Words are whitespace-separated, and a chunk is the stretch of the text from its first word to its last, as
    written: its lines, a code block's indentation, a table's rows kept. In a text holding a script written
    without spaces (Chinese, Japanese, Thai: `text.UNSPACED`) each of its characters is a word
    (`text.word_count`): a split on whitespace found one "word" in a page of Chinese and sent the whole document
    as one chunk, however long, where a model's context may not hold it."""
    spaced = UNSPACED.search(text) is None
    spans = [(m.start(), m.end()) for m in _WORD.finditer(text)] if spaced else word_spans(text)
    count = len(spans)
    if count <= size:
        return [Chunk(0, 1, text)]
    step = size - overlap
    starts = list(range(0, count - overlap, step))
    # The last window is full length, ending at the last word, rather than a stub of a few words.
    starts[-1] = max(0, min(starts[-1], count - size))
    chunks = []
    for i, s in enumerate(starts):
        first, last = spans[s][0], spans[min(s + size, count) - 1][1]
        chunks.append(Chunk(i, len(starts), text[first:last], first, last))
    return chunks
