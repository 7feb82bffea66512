"""report.html: the markdown report as one self-contained HTML file, its PNG charts embedded as data URIs,
so it can be mailed, attached to a W&B run or opened from a Prefect artifact link without the run folder."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from markdown_it import MarkdownIt

_IMAGE = re.compile(r'src="([\w.-]+\.png)"')
_MARKDOWN_IMAGE = re.compile(r"!\[([^\]]*)\]\(([\w.-]+\.png)\)")
STYLE = """
body { font-family: -apple-system, 'Segoe UI', Roboto, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
code { background: #f6f6f6; padding: 0 0.2em; }
img { max-width: 100%; }
h1 { border-bottom: 2px solid #37a; }
"""


def data_uri(path: Path) -> str:
    return f"data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}"


def render_html(markdown: str, folder: Path, title: str) -> str:
    """HTML for `markdown`, with every `name.png` it links read from `folder` and embedded."""
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)

    def embed(match: re.Match[str]) -> str:
        path = folder / match.group(1)
        return f'src="{data_uri(path)}"' if path.is_file() else match.group(0)

    body = _IMAGE.sub(embed, body)
    safe_title = title.replace("<", "&lt;").replace(">", "&gt;")
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{safe_title}</title>'
        f"<style>{STYLE}</style></head>\n<body>\n{body}</body></html>\n"
    )


def embed_markdown_images(markdown: str, folder: Path) -> str:
    """`markdown` with every `![alt](name.png)` read from `folder` and embedded: it renders anywhere (a Prefect
    artifact), with no link back to the run folder and no second login."""

    def embed(match: re.Match[str]) -> str:
        path = folder / match.group(2)
        return f"![{match.group(1)}]({data_uri(path)})" if path.is_file() else match.group(0)

    return _MARKDOWN_IMAGE.sub(embed, markdown)
