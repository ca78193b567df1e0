"""Shared by the benchmark scripts: the atomic write of a markdown table."""

import os
import tempfile


def write_atomic(path: str, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and a rename (never half a file)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".tmp") as f:
        f.write(text)
    os.replace(f.name, path)


def emit(lines: list[str], out: str | None) -> None:
    """Print the finished table and write it to `out` (atomically) when given."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out:
        write_atomic(out, text)
