"""One visual language for every figure: colours, line styles, markers, fonts and number formats.

Readable in greyscale and by colour-blind readers: modes never differ by colour alone. Each mode
has an Okabe–Ito colour (a palette designed to stay distinct under the common colour-vision
deficiencies) *and* its own line style and marker. Learning rates are ordered, so they get a
sequential colour map whose lightness rises monotonically with the rate (cividis, built to be
uniform for colour-blind readers and in greyscale), plus their own marker.
"""

from __future__ import annotations

import math

import matplotlib as mpl
import numpy as np

MODE_STYLE = {  # Okabe–Ito blue / vermillion / bluish green; solid / dashed / dash-dot
    "digital": {"color": "#0072B2", "linestyle": "-", "marker": "o", "label": "digital (baseline)"},
    "optical": {"color": "#D55E00", "linestyle": "--", "marker": "s", "label": "optical"},
    "optical-mase": {"color": "#009E73", "linestyle": "-.", "marker": "^", "label": "optical (mase numerics)"},
}
LR_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
DIVERGED_MARKER = "x"

RC = {
    "font.size": 9,
    "axes.titlesize": 9.5,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "figure.titlesize": 11,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "lines.linewidth": 1.4,
    "lines.markersize": 4.5,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.05,
    "pdf.fonttype": 42,  # embed TrueType so text stays editable/searchable in the PDF
    "svg.hashsalt": "optical-clm",
}


def lr_styles(lrs: list[float]) -> dict[float, dict]:
    """Colour and marker for each learning rate, dark (small lr) to light (large lr)."""
    ordered = sorted(set(lrs))
    cmap = mpl.colormaps["cividis"]
    # 0.0–0.8 of cividis: from dark blue to olive; the yellow end is too light on white paper.
    positions = np.linspace(0.0, 0.8, len(ordered)) if len(ordered) > 1 else [0.0]
    return {
        lr: {"color": mpl.colors.to_hex(cmap(p)), "marker": LR_MARKERS[i % len(LR_MARKERS)]}
        for i, (lr, p) in enumerate(zip(ordered, positions, strict=True))
    }


def format_lr_label(lr: float) -> str:
    """`1e-05` → `1e-5`, `2.5e-06` → `2.5e-6`, `0.001` → `1e-3`: always scientific, short, unambiguous."""
    mantissa, exponent = f"{lr:.2e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def format_count(n: float) -> str:
    """60_123_456 → `60.1M`, 1.2e9 → `1.2B`, 13_200 → `13.2k` (three significant digits)."""
    if not math.isfinite(n):
        return ""
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:.3g}"


def count_formatter() -> mpl.ticker.FuncFormatter:
    """Axis tick formatter for token and parameter counts (`20M`, `1.5B`)."""
    return mpl.ticker.FuncFormatter(lambda v, _pos: format_count(v) if v > 0 else "0")


def lr_formatter() -> mpl.ticker.FuncFormatter:
    """Log-axis tick formatter for learning rates (`1e-5`)."""
    return mpl.ticker.FuncFormatter(lambda v, _pos: format_lr_label(v))
