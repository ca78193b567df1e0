"""Shared file helpers of the analysis: the error type, and atomic writes of text, CSV and figures.

Every output is written to a temporary file in the destination folder and moved into place with
`os.replace`, so a killed job never leaves a half-written table or figure that Snakemake (or a
reader) would take for a finished one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure


class AnalysisError(ValueError):
    """Bad input to the analysis (missing file, wrong column, invalid value); the message names it."""


_UMASK = os.umask(0)  # read the process umask (os.umask can only read it by setting it) ...
os.umask(_UMASK)  # ... and put it back at once


def _atomic(path: str | Path, write) -> Path:
    """Call `write(tmp_path)` on a temp file next to `path`, then rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return _atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    """Write `df` as CSV (no index, full float precision, `nan`/`inf` spelled out) atomically."""
    return _atomic(path, lambda tmp: df.to_csv(tmp, index=False, na_rep="nan"))


def save_figure(fig: Figure, out_dir: str | Path, stem: str, dpi: int = 200) -> list[Path]:
    """Save `fig` as `{stem}.png` and `{stem}.pdf` in `out_dir`, atomically and byte-reproducibly.

    PDF creation dates are dropped and PNGs carry no timestamp, so the same data and code give the
    same bytes (reruns and caches don't see spurious changes).
    """
    paths = []
    for ext, metadata in (("png", {"Software": None}), ("pdf", {"CreationDate": None, "Producer": None})):
        target = Path(out_dir) / f"{stem}.{ext}"
        _atomic(
            target,
            lambda tmp, e=ext, m=metadata: fig.savefig(
                tmp, format=e, dpi=dpi, metadata=m, bbox_inches="tight", pad_inches=0.05
            ),
        )
        paths.append(target)
    return paths
