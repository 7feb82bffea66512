"""Real text in other languages and scripts, which no one on this project wrote: the translations in this machine's
gettext catalogs (/usr/share/locale/<language>/LC_MESSAGES/*.mo: bash's help, dpkg's, binutils', coreutils'
messages, translated by their projects' translators). Debian ships them with the packages; the suite's machines
(and CI's) have Chinese, Japanese, Russian and Thai ones."""

from __future__ import annotations

import gettext
import os
from pathlib import Path

import pytest
import regex

LOCALES = Path("/usr/share/locale")
# the script a language's translations are written in (a message mostly in another, e.g. left in English, is not used)
SCRIPTS = {"zh_CN": r"\p{Han}", "ja": r"[\p{Han}\p{Hiragana}\p{Katakana}]", "ru": r"\p{Cyrillic}", "th": r"\p{Thai}"}


def translated_messages(language: str, min_chars: int = 60) -> list[str]:
    """The distinct translations of at least `min_chars` characters in `language`, at least 60 % of whose letters are
    in its script, in a stable order (catalog, then message); whitespace runs made single spaces. Fails under CI
    where the catalogs are missing (the suite's core must not skip), skips elsewhere."""
    script = regex.compile(SCRIPTS[language])
    found: dict[str, None] = {}
    for path in sorted((LOCALES / language / "LC_MESSAGES").glob("*.mo")):
        try:
            with path.open("rb") as handle:
                catalog = gettext.GNUTranslations(handle)._catalog  # noqa: SLF001 - the catalog's messages
        except (OSError, ValueError):
            continue
        for key in sorted(catalog, key=str):
            text = catalog[key]
            if not isinstance(text, str) or not key:  # the empty key holds the catalog's header
                continue
            text = " ".join(text.split())
            letters = regex.findall(r"\p{L}", text)
            if len(text) >= min_chars and len(script.findall(text)) >= 0.6 * len(letters):
                found[text] = None
    if len(found) < 20:
        why = f"fewer than 20 {language} translations of {min_chars}+ characters under {LOCALES}"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(reason=why)
    return list(found)
