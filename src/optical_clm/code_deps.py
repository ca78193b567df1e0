"""Which of the project's own source files a workflow script imports, followed transitively.

Snakemake reruns a `shell:` job when one of its input files changes content (files up to 1 MB are
compared by checksum, not mtime), but it knows nothing about the modules a script imports. Listing a
script's import closure under `src/` as the rule's inputs makes an edit to, say, the plotting module
rerun the plot and nothing else, while an edit to the smoothing code reruns smoothing too. Imports are
read statically with `ast` (any `import`/`from ... import` anywhere in a file, including inside
functions); modules outside `src/` (torch, pandas, ...) are not followed.
"""

from __future__ import annotations

import ast
from pathlib import Path


def _module_file(name: str, src: Path) -> Path | None:
    """`src/a/b.py` or `src/a/b/__init__.py` for module `a.b`, if it is one of ours."""
    base = src.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(path: Path) -> set[str]:
    """Every absolute module name `path` imports, plus `pkg.name` for `from pkg import name` (maybe a module)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def local_imports(script: str | Path, src: str | Path = "src") -> list[str]:
    """Sorted paths of the files under `src` that `script` imports, directly or through each other.

    A package's `__init__.py` is included whenever one of its modules is (Python runs it on import).
    """
    src = Path(src)
    seen: set[Path] = set()
    todo = [Path(script)]
    while todo:
        for name in _imported_names(todo.pop()):
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # `a.b.c` also imports `a` and `a.b`
                found = _module_file(".".join(parts[:depth]), src)
                if found is not None and found not in seen:
                    seen.add(found)
                    todo.append(found)
    return sorted(p.as_posix() for p in seen)
