"""Matplotlib drawing in the paper's look (Agg backend, no display needed) and atomic figure saving.

Every figure stands alone: its title says what is plotted and on what input, every colour, band and marker has a
legend entry, and an outlier token is drawn in a magenta box wherever its label appears (a "." is visible).
"""
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from mpl_toolkits.mplot3d import Axes3D  # noqa: E402,F401  (registers the 3d projection)

from lib.files import write_atomically  # noqa: E402

OUTLIER = "magenta"
NORMAL = "#3b75af"
CURVES = ("#d62728", "#ff7f0e", "#2ca02c", "#7f7f7f")  # top-1, top-2, top-3, median
BAND_ALPHA = 0.1  # outlier layers: magenta bands on a layer axis
LABEL_BOX = dict(boxstyle="round,pad=0.15", facecolor="#ffe0ff", edgecolor=OUTLIER, linewidth=1.2)
plt.rcParams.update({"font.size": 10, "axes.titleweight": "bold", "axes.labelweight": "bold"})


def figure(ncols=1, nrows=1, size=(5.0, 4.0), three_d=False):
    """A figure of nrows x ncols panels, `size` inches each; three_d: True for all 3-D panels, or their indices."""
    fig = plt.figure(figsize=(size[0] * ncols, size[1] * nrows))
    axes = [fig.add_subplot(nrows, ncols, i + 1,
                            projection="3d" if (three_d if isinstance(three_d, bool) else i in three_d) else None)
            for i in range(nrows * ncols)]
    return fig, axes


def title(fig, text: str, source: str | None = None) -> None:
    """The figure title: the model's name and what is plotted, then the input it was computed on (`source`), each
    wrapped to the figure's width; panels keep short titles."""
    width = max(40, int(fig.get_figwidth() * 11))
    lines = textwrap.wrap(text, width, break_on_hyphens=False)  # a flag such as --no-bos stays whole
    lines += textwrap.wrap(source, width + 10, break_on_hyphens=False) if source else []
    fig.suptitle("\n".join(lines), fontweight="bold", fontsize=11)


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


def mark_labels(labels, highlight, fontsize=10, box=LABEL_BOX) -> None:
    """Tick labels of the outlier tokens (indices in `highlight`): magenta, bold and boxed."""
    highlight = set(highlight)
    for k, label in enumerate(labels):
        if k in highlight:
            label.set_color(OUTLIER)
            label.set_fontsize(fontsize)
            label.set_fontweight("bold")
            label.set_bbox(box)


def legend_entries(ax, entries, **kwargs):
    """A legend of proxy artists: entries are (kind, colour, label), kind "line", "dot", "band", "frame" or "bar"."""
    make = {"line": lambda c: Line2D([], [], color=c, linewidth=1.6),
            "dot": lambda c: Line2D([], [], color=c, marker="o", linestyle="none", markersize=6),
            "band": lambda c: Patch(facecolor=c, alpha=BAND_ALPHA * 2.5, edgecolor=c, linewidth=0.6),
            "frame": lambda c: Patch(fill=False, edgecolor=c, linewidth=2),
            "bar": lambda c: Patch(facecolor=c)}
    handles = []
    for kind, color, label in entries:
        handle = make[kind](color)
        handle.set_label(label)
        handles.append(handle)
    return ax.legend(handles=handles, **{"fontsize": 7, "framealpha": 0.85, **kwargs})


def wireframe(ax, values, row_labels, highlight=(), columns=None, title="", xlabel="channel", zlabel="",
              legend=("outlier token", "other token")):
    """3-D view of |values| [rows, columns]: one line per row (token or weight row), highlighted rows magenta;
    `legend` names the highlighted rows and the others."""
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
    # rows sit close: small, unfilled boxes, so that neighbouring labels show through each other
    mark_labels(ax.get_yticklabels(), highlight, fontsize=7.5, box=dict(LABEL_BOX, facecolor="none", pad=0.1))
    ax.set_box_aspect((1.0, 1.0 + 0.06 * max(rows - 8, 0), 0.85))  # more rows, a deeper axis
    entries = ([("line", OUTLIER, legend[0])] if highlight else []) + [("line", NORMAL, legend[1])]
    legend_entries(ax, entries, loc="upper left")
    if columns is not None:
        ax.set_xticks(xs)
        ax.set_xticklabels([str(c) for c in columns], fontsize=7)
    ax.set_xlabel(xlabel, fontweight="bold")
    ax.set_zlabel(zlabel, fontweight="bold")
    ax.set_zlim(0, max(values.max() * 1.05, 1e-6))
    ax.view_init(elev=22, azim=-60)
    ax.set_title(title, fontsize=10)
    bold_ticks(ax)


def attention_heatmap(ax, probs, labels, highlight=(), title="", key_label="outlier key", colorbar="attention",
                      vmin=0.0):
    """Lower-triangular heatmap of a [queries, keys] attention map (`colorbar` names its values; `vmin` None: the
    smallest shown); each outlier key's column framed in magenta and its labels boxed, named in a legend in the
    empty upper triangle (`key_label`)."""
    probs = np.asarray(probs, dtype=np.float64)
    n = probs.shape[0]
    masked = np.ma.masked_where(np.triu(np.ones((n, n), dtype=bool), k=1), probs)
    low = float(masked.min()) if vmin is None else vmin
    image = ax.imshow(masked, cmap="viridis", vmin=low, vmax=max(float(probs.max()), low + 1e-6))
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04).set_label(colorbar, fontsize=8)
    short = [short_label(t) for t in labels]
    ax.set_xticks(range(n))
    ax.set_xticklabels(short, rotation=90, fontsize=7)
    ax.set_yticks(range(n))
    ax.set_yticklabels(short, fontsize=7)
    for axis_labels in (ax.get_xticklabels(), ax.get_yticklabels()):
        mark_labels(axis_labels, highlight)
    for k in highlight:  # the key's column, from its own query down
        ax.add_patch(Rectangle((k - 0.5, k - 0.5), 1, n - k, fill=False, edgecolor=OUTLIER, linewidth=2, zorder=3))
    if highlight:
        keys = ", ".join(f"{short_label(labels[k])!r} ({k})" for k in highlight)
        legend_entries(ax, [("frame", OUTLIER, f"{key_label}: {keys}")], loc="upper right")
    ax.set_xlabel("key", fontweight="bold")
    ax.set_ylabel("query", fontweight="bold")
    ax.set_title(title, fontsize=10)
    bold_ticks(ax)


def layer_curves(ax, layers, series: dict, title="", ylabel="magnitude", log=True, marked_layers=(), band_label="",
                 legend_loc="best", legend_ncol=2):
    """Layer-wise curves (top-1/2/3, median...), layers on x (0-based); `marked_layers` shaded, the band named in the
    legend by `band_label`; `legend_loc` "below" puts the legend under the panel."""
    for (name, values), color in zip(series.items(), CURVES + CURVES):
        ax.plot(layers, values, marker="o", markersize=3, label=name, color=color)
    band = shade_layers(ax, marked_layers, band_label)
    if log and all(v > 0 for values in series.values() for v in values):
        ax.set_yscale("log")
    ax.set_ylabel(ylabel, fontweight="bold")
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles + ([band] if band else []), labels + ([band_label] if band else []), fontsize=7, framealpha=0.85,
              **place(legend_loc, legend_ncol))
    layer_axis(ax, title)


def place(loc: str, ncol: int = 2) -> dict:
    """Legend placement: a matplotlib location, or "below" the panel (under its x label)."""
    if loc == "below":
        return dict(loc="upper center", bbox_to_anchor=(0.5, 0.0), borderaxespad=5.5, ncol=ncol)  # in font sizes
    return dict(loc=loc)


def shade_layers(ax, layers, label=""):
    """Outlier layers as magenta bands on a layer axis; returns the legend handle of the band (None for no layer)."""
    for layer in layers:
        ax.axvspan(layer - 0.5, layer + 0.5, color=OUTLIER, alpha=BAND_ALPHA, linewidth=0)
    if not layers:
        return None
    return Patch(facecolor=OUTLIER, alpha=BAND_ALPHA * 2.5, edgecolor=OUTLIER, linewidth=0.6, label=label)


def layer_axis(ax, title=""):
    """An x axis of layers (integer ticks from 0, the first layer), a light grid, bold ticks and the panel title."""
    ax.set_xlabel("layer", fontweight="bold")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    low, high = ax.get_xlim()
    ax.set_xlim(max(low, -0.5), high)
    bold_ticks(ax)


def index_scatter(ax, layers, indices_per_layer, title="", ylabel="channel", highlight=(), labels=("", ""),
                  ranks=("rank 1", "rank 2", "rank 3"), legend_loc="best"):
    """Top-k indices (channels or columns) per layer as a scatter, the first-ranked largest; highlighted
    (layer, index) pairs magenta. The legend names the two colours (`labels`: highlighted, others) and the dot
    sizes (`ranks`: the first three ranks in words)."""
    highlight = set(highlight)
    size = lambda rank: 28 - 6 * min(rank, 3)  # noqa: E731
    for layer, indices in zip(layers, indices_per_layer):
        for rank, index in enumerate(indices):
            ax.scatter(layer, index, s=size(rank), color=OUTLIER if (layer, index) in highlight else NORMAL,
                       alpha=0.7, edgecolors="none")
    ax.set_ylabel(ylabel, fontweight="bold")
    handles = []
    if highlight:
        handles.append(Line2D([], [], color=OUTLIER, marker="o", linestyle="none", label=labels[0]))
    handles.append(Line2D([], [], color=NORMAL, marker="o", linestyle="none", label=labels[1]))
    shown = max((len(i) for i in indices_per_layer), default=0)
    handles += [Line2D([], [], color="#999999", marker="o", linestyle="none", markersize=np.sqrt(size(r)),
                       label=ranks[r]) for r in range(min(shown, 3))]
    ax.legend(handles=handles, fontsize=7, framealpha=0.85, **place(legend_loc, 3))
    layer_axis(ax, title)


def category_bars(ax, shares: dict, title=""):
    names = ["initial_token", "strong_delimiter", "weak_semantic", "other"]
    values = [100.0 * shares.get(n, 0.0) for n in names]
    bars = ax.bar(range(4), values, color=[OUTLIER, "#9467bd", "#17becf", "#c7c7c7"])
    for bar, value in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, value + 1, f"{value:.1f}%", ha="center", fontsize=8,
                fontweight="bold")
    ax.set_xticks(range(4))
    ax.set_xticklabels(["first\ntoken", "strong\ndelimiter", "weak\nsemantic", "other"])
    ax.set_ylim(0, 110)
    ax.set_ylabel("share of outlier positions (%)", fontweight="bold")
    ax.set_title(title, fontsize=10)
    bold_ticks(ax)


def range_bars(ax, layers, mean, low, high, title="", ylabel="", labels=("mean", "min to max")):
    """Per-layer mean (dots) with min-to-max bars (per-head outlier ratio); `labels` name them in the legend."""
    mean, low, high = (np.asarray(v, dtype=np.float64) for v in (mean, low, high))
    ax.errorbar(layers, mean, yerr=[mean - low, high - mean], fmt="o", color=NORMAL, ecolor="#999999",
                capsize=3, markersize=4)
    legend_entries(ax, [("dot", NORMAL, labels[0]), ("line", "#999999", labels[1])], loc="best")
    ax.set_ylabel(ylabel, fontweight="bold")
    ax.set_ylim(-0.02, 1.02)
    layer_axis(ax, title)


def token_bars(ax, labels, values, highlight=(), title="", ylabel=""):
    """One bar per token, outlier tokens magenta."""
    colors = [OUTLIER if i in set(highlight) else NORMAL for i in range(len(values))]
    ax.bar(range(len(values)), values, color=colors)
    ax.set_xticks(range(len(values)))
    ax.set_xticklabels([short_label(t) for t in labels], rotation=90, fontsize=7)
    mark_labels(ax.get_xticklabels(), highlight)
    ax.set_ylabel(ylabel, fontweight="bold")
    ax.set_title(title, fontsize=10)
    bold_ticks(ax)


def signed_line(ax, values, mark=None, title="", xlabel="", color=NORMAL, mark_label=None, label="value"):
    """Signed values over dimensions (`label` in the legend); the marked dimension a magenta dot, named in the
    legend with its value (`mark_label`: what it is, default its index)."""
    values = np.asarray(values, dtype=np.float64)
    ax.plot(np.arange(len(values)), values, color=color, linewidth=0.8, label=label)
    if mark is not None and 0 <= mark < len(values):
        ax.scatter([mark], [values[mark]], color=OUTLIER, zorder=3, s=18,
                   label=f"{mark_label or mark}: {values[mark]:.3g}")
    ax.legend(fontsize=6.5, framealpha=0.85, loc="best", handlelength=1.2)
    ax.set_xlabel(xlabel, fontweight="bold", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    bold_ticks(ax)


def layer_token_map(ax, values, labels, highlight=(), title="", vmin=None, vmax=None, colorbar=""):
    """Heatmap of a [layers, tokens] map: layers up the y axis from 0, tokens along x; the outlier tokens' columns
    framed in magenta and their labels boxed; `colorbar` names the colour scale."""
    values = np.asarray(values, dtype=np.float64)
    image = ax.imshow(values, cmap="viridis", aspect="auto", origin="lower", vmin=vmin, vmax=vmax,
                      extent=(-0.5, values.shape[1] - 0.5, -0.5, values.shape[0] - 0.5))
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04).set_label(colorbar, fontsize=8)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=90, fontsize=7)
    mark_labels(ax.get_xticklabels(), highlight)
    for k in highlight:
        ax.add_patch(Rectangle((k - 0.5, -0.5), 1, values.shape[0], fill=False, edgecolor=OUTLIER, linewidth=2,
                               zorder=3))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("token", fontweight="bold")
    ax.set_ylabel("layer", fontweight="bold")
    ax.set_title(title, fontsize=9)
