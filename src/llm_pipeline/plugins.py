"""Registries for the extension points (QA backends, dedup methods, evaluation candidate kinds), and the loading
of a user's own plug-ins.

An extension registers itself by name, in one of two ways, and no library file is edited:
  - a decorator in a module the config names under `plugins:` (imported before the config is validated):
        @CANDIDATE_KINDS.register("echo")
        class EchoCandidate: ...
  - a Python entry point in the user's own installed package, in the registry's group, e.g.
        [project.entry-points."llm_pipeline.candidates"]
        echo = "my_package.candidates:EchoCandidate"
The library's own extensions use the decorator in their own modules; a registry imports those modules (its
`builtins`) and reads its entry points on the first lookup, so nothing heavy is imported before it is needed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from llm_pipeline.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named extensions of one kind. `get` and `names` see the built-ins, every decorator run so far, and the
    entry points of the registry's group (loaded only when looked up by name)."""

    def __init__(self, kind: str, group: str, builtins: Iterable[str] = ()):
        self.kind = kind  # "candidate kind", for messages
        self.group = group  # the entry-point group
        self._builtins = tuple(builtins)
        self._entries: dict[str, T] = {}
        self._entry_points: dict[str, str] = {}  # name -> "module:attr", imported on first use
        self._discovered = False

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(extension: T) -> T:
            existing = self._entries.get(name)
            if existing is not None and existing is not extension:
                raise ValueError(f"{self.kind} {name!r} is already registered ({_label(existing)})")
            self._entries[name] = extension
            return extension

        return decorator

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        for module in self._builtins:
            importlib.import_module(module)
        for point in entry_points(group=self.group):
            if point.name not in self._entries:
                self._entry_points[point.name] = point.value

    def names(self) -> list[str]:
        self._discover()
        return sorted({*self._entries, *self._entry_points})

    def get(self, name: str) -> T:
        self._discover()
        if name not in self._entries and name in self._entry_points:
            module, _, attribute = self._entry_points[name].partition(":")
            extension = importlib.import_module(module)
            for part in attribute.split("."):
                extension = getattr(extension, part)
            self._entries[name] = extension  # type: ignore[assignment]
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.names()


def _label(extension: object) -> str:
    return f"{getattr(extension, '__module__', '?')}.{getattr(extension, '__qualname__', extension)}"


def import_plugins(modules: Iterable[str]) -> None:
    """Import the modules a config names under `plugins:`, so their decorators register; a module that cannot
    be imported fails the config, naming it."""
    problems = []
    for index, module in enumerate(modules):
        try:
            importlib.import_module(module)
        except Exception as exc:  # any import failure is a config problem the user must see, with its cause
            problems.append((f"plugins.{index}", f"cannot import {module!r}: {type(exc).__name__}: {exc}"))
    if problems:
        raise ConfigError(problems)
