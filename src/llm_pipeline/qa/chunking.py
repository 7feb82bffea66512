"""Long documents split into overlapping word windows, so every fact sits whole in at least one chunk."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Chunk:
    index: int
    count: int
    text: str


def chunk_text(text: str, size: int, overlap: int) -> list[Chunk]:
    """Windows of `size` words advancing by size - overlap; a text that fits is one chunk, unchanged."""
    words = text.split()
    if len(words) <= size:
        return [Chunk(0, 1, text)]
    step = size - overlap
    starts = list(range(0, len(words) - overlap, step))
    # The last window is full length, ending at the last word, rather than a stub of a few words.
    starts[-1] = max(0, min(starts[-1], len(words) - size))
    return [Chunk(i, len(starts), " ".join(words[s : s + size])) for i, s in enumerate(starts)]
