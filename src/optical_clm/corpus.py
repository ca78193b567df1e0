"""The offline corpus: the Python standard-library sources of the running interpreter.

Every machine with Python has them, so the default study needs no download. Files are the
`*.py` under `sysconfig.get_paths()["stdlib"]`, sorted by relative POSIX path (deterministic for
a given Python build). Test suites, third-party packages and build-specific files are skipped
(`SKIP_DIRS`, `SKIP_FILES`). Documents are joined with `DOC_SEP` (ASCII record separator, which
no kept source file contains) so the tokenize stage can split them again and put an EOS id
between them.
"""

from __future__ import annotations

import fnmatch
import hashlib
import platform
import sys
import sysconfig
from pathlib import Path
from typing import Any

from optical_clm import atomic

DOC_SEP = "\x1e"
SKIP_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})
# _sysconfigdata* records the build machine's paths; config-3.x-* holds build scripts.
SKIP_FILES = ("_sysconfigdata_*", "config-*")


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path | None = None) -> list[Path]:
    """The kept `*.py` files under `root` (default: the stdlib), sorted by relative path."""
    root = root or stdlib_dir()
    kept = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if SKIP_DIRS.intersection(rel.parts[:-1]):
            continue
        if any(fnmatch.fnmatch(part, pat) for part in rel.parts for pat in SKIP_FILES):
            continue
        kept.append(rel)
    return [root / rel for rel in sorted(kept, key=lambda p: p.as_posix())]


def read_source(path: Path) -> str | None:
    """The file as text (UTF-8, the stdlib's encoding); None if it is not UTF-8 or holds DOC_SEP."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None
    return None if DOC_SEP in text else text


def build_corpus(
    out: str | Path, meta_out: str | Path, *, max_mb: float | None = None, root: Path | None = None
) -> dict:
    """Write the corpus text file and its metadata JSON; returns the metadata.

    `max_mb` caps the corpus size: files are added in sorted order until the next one would pass
    the cap (so a capped corpus is a deterministic prefix of the full one).
    """
    if max_mb is not None and max_mb <= 0:
        raise ValueError(f"--max-mb must be positive, got {max_mb}")
    root = root or stdlib_dir()
    files = stdlib_files(root)
    if not files:
        raise ValueError(f"no *.py files found under {root}")
    cap = None if max_mb is None else int(max_mb * 1e6)
    docs: list[str] = []
    n_bytes, skipped = 0, 0
    for path in files:
        text = read_source(path)
        if not text:  # unreadable, or an empty file (e.g. a bare __init__.py): not a document
            skipped += 1
            continue
        size = len(text.encode("utf-8")) + len(DOC_SEP)
        if cap is not None and n_bytes + size > cap:
            break
        docs.append(text)
        n_bytes += size
    body = DOC_SEP.join(docs)
    data = body.encode("utf-8")
    atomic.write_text(out, body)
    meta: dict[str, Any] = {
        "source": "python-stdlib",
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "python_build": sys.version,
        "stdlib_dir": str(root),
        "n_files": len(docs),
        "n_files_skipped": skipped,  # not UTF-8, contain DOC_SEP, or empty
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "max_mb": max_mb,
        "doc_separator": DOC_SEP,
    }
    atomic.write_json(meta_out, meta)
    return meta


def read_documents(path: str | Path) -> list[str]:
    """Split a corpus text file back into documents (a file without DOC_SEP is one document)."""
    text = Path(path).read_text(encoding="utf-8")
    return [doc for doc in text.split(DOC_SEP) if doc]
