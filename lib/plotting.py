"""Matplotlib drawing in the paper's look (Agg backend, no display needed) and atomic figure saving."""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from mpl_toolkits.mplot3d import Axes3D  # noqa: E402,F401  (registers the 3d projection)

from lib.files import write_atomically  # noqa: E402

OUTLIER = "magenta"
NORMAL = "#3b75af"
CURVES = ("#d62728", "#ff7f0e", "#2ca02c", "#7f7f7f")  # top-1, top-2, top-3, median
plt.rcParams.update({"font.size": 10, "axes.titleweight": "bold", "axes.labelweight": "bold"})


def figure(ncols=1, nrows=1, size=(5.0, 4.0), three_d=False):
    """A figure of nrows x ncols panels, `size` inches each; three_d: True for all 3-D panels, or their indices."""
    fig = plt.figure(figsize=(size[0] * ncols, size[1] * nrows))
    axes = [fig.add_subplot(nrows, ncols, i + 1,
                            projection="3d" if (three_d if isinstance(three_d, bool) else i in three_d) else None)
            for i in range(nrows * ncols)]
    return fig, axes


def title(fig, text: str) -> None:
    """The figure title: the model's name (and what the figure is of); panels keep short titles."""
    fig.suptitle(text, fontweight="bold")


def save(fig, base: Path, formats) -> list[str]:
    """Write fig as base.<fmt> for each format, each through a temp file and os.replace; returns the paths."""
    paths = []
    fig.tight_layout()
    for fmt in formats:
        path = base.with_suffix("." + fmt)
        write_atomically(path, lambda f: fig.savefig(f, format=fmt, dpi=120 if fmt == "png" else None,
                                                     bbox_inches="tight"), binary=True)
        paths.append(str(path))
    plt.close(fig)
    return paths


def bold_ticks(ax):
    for label in ax.get_xticklabels() + ax.get_yticklabels():
        label.set_fontweight("bold")
    if hasattr(ax, "get_zticklabels"):
        for label in ax.get_zticklabels():
            label.set_fontweight("bold")


def short_label(token: str, width: int = 8) -> str:
    text = token.replace("\n", "\\n").replace("\u2581", " ").replace("\u0120", " ").replace("\u010a", "\\n")
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def wireframe(ax, values, row_labels, highlight=(), columns=None, title="", xlabel="channel", zlabel=""):
    """3-D view of |values| [rows, columns]: one line per row (token or weight row), highlighted rows magenta."""
    values = np.abs(np.asarray(values, dtype=np.float64))
    rows, width = values.shape
    xs = np.arange(width) if columns is None else np.arange(len(columns))
    highlight = set(highlight)
    for r in range(rows):
        outlier = r in highlight
        ax.plot(xs, np.full(width, r), values[r], color=OUTLIER if outlier else NORMAL,
                linewidth=1.6 if outlier else 0.7, alpha=1.0 if outlier else 0.8)
    ax.set_yticks(range(rows))
    ax.set_yticklabels([short_label(t) for t in row_labels], fontsize=7)
    for r, label in enumerate(ax.get_yticklabels()):
        if r in highlight:
            label.set_color(OUTLIER)
            label.set_fontsize(10)
    if columns is not None:
        ax.set_xticks(xs)
        ax.set_xticklabels([str(c) for c in columns], fontsize=7)
    ax.set_xlabel(xlabel, fontweight="bold")
    ax.set_zlabel(zlabel, fontweight="bold")
    ax.set_zlim(0, max(values.max() * 1.05, 1e-6))
    ax.view_init(elev=22, azim=-60)
    ax.set_title(title, fontsize=10)
    bold_ticks(ax)


def attention_heatmap(ax, probs, labels, highlight=(), title=""):
    """Lower-triangular heatmap of a [queries, keys] attention map; outlier keys' labels in magenta."""
    probs = np.asarray(probs, dtype=np.float64)
    n = probs.shape[0]
    masked = np.ma.masked_where(np.triu(np.ones((n, n), dtype=bool), k=1), probs)
    image = ax.imshow(masked, cmap="viridis", vmin=0.0, vmax=max(float(probs.max()), 1e-6))
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    short = [short_label(t) for t in labels]
    ax.set_xticks(range(n))
    ax.set_xticklabels(short, rotation=90, fontsize=7)
    ax.set_yticks(range(n))
    ax.set_yticklabels(short, fontsize=7)
    for axis_labels in (ax.get_xticklabels(), ax.get_yticklabels()):
        for k, label in enumerate(axis_labels):
            if k in set(highlight):
                label.set_color(OUTLIER)
                label.set_fontsize(10)
    ax.set_xlabel("key", fontweight="bold")
    ax.set_ylabel("query", fontweight="bold")
    ax.set_title(title, fontsize=10)
    bold_ticks(ax)


def layer_curves(ax, layers, series: dict, title="", ylabel="magnitude", log=True, marked_layers=()):
    """Layer-wise curves (top-1/2/3, median...), 1-based layers on x; outlier layers shaded."""
    for (name, values), color in zip(series.items(), CURVES + CURVES):
        ax.plot(layers, values, marker="o", markersize=3, label=name, color=color)
    shade_layers(ax, marked_layers)
    if log and all(v > 0 for values in series.values() for v in values):
        ax.set_yscale("log")
    ax.set_ylabel(ylabel, fontweight="bold")
    ax.legend(fontsize=8)
    layer_axis(ax, title)


def shade_layers(ax, layers):
    """Outlier layers as magenta bands on a layer axis."""
    for layer in layers:
        ax.axvspan(layer - 0.5, layer + 0.5, color=OUTLIER, alpha=0.08, linewidth=0)


def layer_axis(ax, title=""):
    """An x axis of 1-based layers (integer ticks), a light grid, bold ticks and the panel title."""
    ax.set_xlabel("layer", fontweight="bold")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    bold_ticks(ax)


def index_scatter(ax, layers, indices_per_layer, title="", ylabel="channel", highlight=()):
    """Top-k indices (channels or columns) per layer as a scatter; highlighted (layer, index) pairs magenta."""
    highlight = set(highlight)
    for layer, indices in zip(layers, indices_per_layer):
        for rank, index in enumerate(indices):
            ax.scatter(layer, index, s=28 - 6 * min(rank, 3), color=OUTLIER if (layer, index) in highlight else NORMAL,
                       alpha=0.7, edgecolors="none")
    ax.set_ylabel(ylabel, fontweight="bold")
    layer_axis(ax, title)


def category_bars(ax, shares: dict, title=""):
    names = ["initial_token", "strong_delimiter", "weak_semantic", "other"]
    values = [100.0 * shares.get(n, 0.0) for n in names]
    bars = ax.bar(range(4), values, color=[OUTLIER, "#9467bd", "#17becf", "#c7c7c7"])
    for bar, value in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, value + 1, f"{value:.1f}%", ha="center", fontsize=8,
                fontweight="bold")
    ax.set_xticks(range(4))
    ax.set_xticklabels(["initial", "strong delim.", "weak sem.", "other"])
    ax.set_ylim(0, 110)
    ax.set_ylabel("share of outlier positions (%)", fontweight="bold")
    ax.set_title(title, fontsize=10)
    bold_ticks(ax)


def range_bars(ax, layers, mean, low, high, title="", ylabel=""):
    """Per-layer mean with min/max error bars (per-head outlier ratio)."""
    mean, low, high = (np.asarray(v, dtype=np.float64) for v in (mean, low, high))
    ax.errorbar(layers, mean, yerr=[mean - low, high - mean], fmt="o", color=NORMAL, ecolor="#999999",
                capsize=3, markersize=4)
    ax.set_ylabel(ylabel, fontweight="bold")
    ax.set_ylim(-0.02, 1.02)
    layer_axis(ax, title)


def token_bars(ax, labels, values, highlight=(), title="", ylabel=""):
    """One bar per token, outlier tokens magenta."""
    colors = [OUTLIER if i in set(highlight) else NORMAL for i in range(len(values))]
    ax.bar(range(len(values)), values, color=colors)
    ax.set_xticks(range(len(values)))
    ax.set_xticklabels([short_label(t) for t in labels], rotation=90, fontsize=7)
    for k, label in enumerate(ax.get_xticklabels()):
        if k in set(highlight):
            label.set_color(OUTLIER)
            label.set_fontsize(10)
    ax.set_ylabel(ylabel, fontweight="bold")
    ax.set_title(title, fontsize=10)
    bold_ticks(ax)


def signed_line(ax, values, mark=None, title="", xlabel="", color=NORMAL):
    """Signed values over dimensions; the marked dimension annotated."""
    values = np.asarray(values, dtype=np.float64)
    ax.plot(np.arange(len(values)), values, color=color, linewidth=0.8)
    if mark is not None and 0 <= mark < len(values):
        ax.scatter([mark], [values[mark]], color=OUTLIER, zorder=3, s=18)
        ax.annotate(f"{mark}: {values[mark]:.3g}", (mark, values[mark]), fontsize=7, fontweight="bold",
                    color=OUTLIER, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel(xlabel, fontweight="bold", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    bold_ticks(ax)


def layer_token_map(ax, values, labels, highlight=(), title="", vmin=None, vmax=None):
    """Heatmap of a [layers, tokens] map: layers 1-based up the y axis, tokens along x (outlier tokens in magenta)."""
    values = np.asarray(values, dtype=np.float64)
    image = ax.imshow(values, cmap="viridis", aspect="auto", origin="lower", vmin=vmin, vmax=vmax,
                      extent=(-0.5, values.shape[1] - 0.5, 0.5, values.shape[0] + 0.5))
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=90, fontsize=7)
    for k, label in enumerate(ax.get_xticklabels()):
        if k in set(highlight):
            label.set_color(OUTLIER)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("token", fontweight="bold")
    ax.set_ylabel("layer", fontweight="bold")
    ax.set_title(title, fontsize=9)
