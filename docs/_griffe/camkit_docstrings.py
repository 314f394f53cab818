"""Griffe extension used by mkdocs.yml: render camkit's docstrings as Markdown.

camkit's docstrings are Google style with a few reStructuredText habits, which mkdocstrings does
not understand. This extension adapts them when the docs are built; the source files are not
changed.

- ``Example:`` section titles become ``Examples:``, the title griffe's Google parser recognises,
  so doctest lines (``>>>``) render as code instead of nested block quotes.
- Sphinx roles (``:class:`X```, ``:func:`~a.b.f```, ...) become cross-references when the
  target is an object shown in the API reference, and inline code otherwise.
- A trailing ``::`` that introduces an indented literal block becomes ``:`` (the indented block
  already renders as code in Markdown).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

# Modules that have a page in the API reference (see nav in mkdocs.yml).
DOCUMENTED_MODULES = (
    "camkit.train",
    "camkit.timm_task",
    "camkit.viz",
    "camkit.io",
    "camkit.cam",
    "camkit.snapmix",
    "camkit.losses",
    "camkit.tta",
    "camkit.metrics",
    "camkit.datasets",
)

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|mod|exc|obj|const):`(~?)([\w.]+)`")
_EXAMPLE_TITLE = re.compile(r"^Example:\s*$", re.MULTILINE)
_LITERAL_MARKER = re.compile(r"(\S)::$", re.MULTILINE)


def _lookup(pkg: griffe.Module, path: str) -> griffe.Object | None:
    """The object at an absolute dotted ``path`` inside ``pkg``, aliases resolved, or ``None``."""
    if path == pkg.path:
        return pkg
    prefix = pkg.path + "."
    if not path.startswith(prefix):
        return None
    try:
        found = pkg[path[len(prefix) :]]
        return found.final_target if found.is_alias else found
    except Exception:
        return None


def _rendered(obj: griffe.Object) -> bool:
    """Whether mkdocstrings shows ``obj`` (and so registers an anchor for it)."""
    if obj.path in DOCUMENTED_MODULES:
        return True
    parent = obj.parent
    if parent is None or obj.name.startswith("_") or not obj.docstring:
        return False
    if parent.is_module and not obj.is_public:
        return False
    return _rendered(parent)


def _resolve(pkg: griffe.Module, where: griffe.Object, target: str) -> str | None:
    """Absolute path of a rendered object that ``target`` names, seen from ``where``."""
    scopes = []
    scope: griffe.Object | None = where
    while scope is not None:
        if scope.is_class or scope.is_module:
            scopes.append(scope.path)
        scope = scope.parent
    candidates = [target, *(f"{s}.{target}" for s in scopes), f"{pkg.path}.{target}"]
    for candidate in candidates:
        found = _lookup(pkg, candidate)
        if found is not None and _rendered(found):
            return found.path
    return None


def _convert(pkg: griffe.Module, obj: griffe.Object, text: str) -> str:
    def role(match: re.Match[str]) -> str:
        short, target = match.group(1) == "~", match.group(2)
        shown = target.rsplit(".", 1)[-1] if short else target
        path = _resolve(pkg, obj, target)
        return f"[`{shown}`][{path}]" if path else f"`{shown}`"

    text = _EXAMPLE_TITLE.sub("Examples:", text)
    text = _ROLE.sub(role, text)
    return _LITERAL_MARKER.sub(r"\1:", text)


class CamkitDocstrings(griffe.Extension):
    """Adapt the docstrings of the ``camkit`` package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.path != "camkit":
            return
        seen: set[str] = set()
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            if obj.path in seen:
                continue
            seen.add(obj.path)
            if obj.docstring is not None:
                obj.docstring.value = _convert(pkg, obj, obj.docstring.value)
            stack.extend(m for m in obj.members.values() if not m.is_alias)
