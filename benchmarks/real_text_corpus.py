"""Real text that no one on this project wrote, available offline, and its exact near-duplicate truth.

Sources:
- `debian`: the package descriptions in this machine's apt lists (`apt-cache dumpavail`; Debian bookworm main has
  about 63,000): short and long description of each package, id = the package name. Real near-duplicates abound
  (a library and its -dev, -doc and -dbg packages; translations of one tool; one template filled per language).
- `docstrings`: the docstrings of the Python packages installed in this environment (module, class, function;
  20 words or more), id = module:qualified name. Copied code across model families gives real copies.
- `copyright`: the copyright files of the Debian packages installed on this machine (/usr/share/doc/*/copyright,
  about 840 here), id = the package name. Long documents (a median of ~570 words, up to ~57,000) that are mostly
  licence texts: real near-duplicates of another kind (one licence with other holders, years and file lists).

Truth: the exact Jaccard of word 5-gram sets, for every pair at or above a floor (0.5), by an exact all-pairs
set-similarity join (SetSimilaritySearch's All-Pairs: prefix filtering, no false negatives). Words: the
lowercased text split on whitespace, sentence punctuation, brackets and quotes stripped from each word's ends
(`arguments.` is `arguments`; `c++`, `>=`, `g++-multilib`, `x86_64` stay as they are): a definition of its own,
not the method's tokenizer.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

TRUTH_SHINGLE = 5
TRUTH_FLOOR = 0.5


def debian_descriptions() -> list[dict]:
    try:
        dump = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"the debian corpus needs apt's package lists (apt-get update): {exc}") from exc
    records, seen = [], set()
    for stanza in dump.split("\n\n"):
        name, lines, in_description = None, [], False
        for line in stanza.splitlines():
            if line.startswith("Package: "):
                name = line.split(": ", 1)[1].strip()
            elif line.startswith("Description: "):
                lines, in_description = [line.split(": ", 1)[1]], True
            elif in_description and line.startswith(" "):
                lines.append("" if line.strip() == "." else line.strip())
            else:
                in_description = False
        if name and lines and name not in seen:
            seen.add(name)
            records.append({"id": name, "text": " ".join(x for x in lines if x), "metadata": {"source": "debian"}})
    return records


def _docstrings(path: Path, module: str) -> Iterator[tuple[str, str]]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    stack: list[tuple[ast.AST, str]] = [(tree, module)]
    while stack:
        node, name = stack.pop()
        text = ast.get_docstring(node, clean=True) if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef |
                                                                  ast.AsyncFunctionDef) else None  # fmt: skip
        if text and len(text.split()) >= 20:
            yield name, text
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                stack.append((child, f"{name}.{child.name}" if name != module else f"{module}:{child.name}"))


def python_docstrings(under: tuple[str, ...] = ("",)) -> list[dict]:
    """Docstrings of the installed packages (or of the folders `under` site-packages), in path order."""
    site = Path(next(p for p in sys.path if p.endswith("site-packages")))
    records, seen = [], set()
    for path in sorted(p for folder in under for p in (site / folder).rglob("*.py")):
        module = ".".join(path.relative_to(site).with_suffix("").parts)
        for name, text in _docstrings(path, module):
            if name not in seen:
                seen.add(name)
                records.append({"id": name, "text": text, "metadata": {"source": "docstrings"}})
    return records


def debian_copyrights(root: Path = Path("/usr/share/doc")) -> list[dict]:
    records = []
    for path in sorted(root.glob("*/copyright")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if text.strip():
            records.append({"id": path.parent.name, "text": text, "metadata": {"source": "copyright"}})
    return records


SOURCES = {"debian": debian_descriptions, "docstrings": python_docstrings, "copyright": debian_copyrights}


def write_corpus(path: Path, source: str, limit: int | None = None) -> int:
    records = SOURCES[source]()[:limit]
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return len(records)


_EDGE_PUNCTUATION = ".,;:!?\"'()[]{}`"


def truth_words(text: str) -> list[str]:
    stripped = (word.strip(_EDGE_PUNCTUATION) for word in text.lower().split())
    return [word for word in stripped if word]


def truth_shingles(text: str, size: int = TRUTH_SHINGLE) -> set[str]:
    words = truth_words(text)
    if len(words) <= size:
        return {" ".join(words)}
    return {" ".join(words[i : i + size]) for i in range(len(words) - size + 1)}


def truth_pairs(texts: list[str], floor: float = TRUTH_FLOOR) -> dict[tuple[int, int], float]:
    """{(i, j): exact Jaccard} for every pair i < j at or above `floor`."""
    from SetSimilaritySearch import all_pairs

    sets = [truth_shingles(t) for t in texts]
    pairs = {}
    for a, b, similarity in all_pairs(sets, similarity_func_name="jaccard", similarity_threshold=floor):
        i, j = (a, b) if a < b else (b, a)
        pairs[(i, j)] = similarity
    return pairs
