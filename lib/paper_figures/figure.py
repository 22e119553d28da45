"""What a figure is: a name, what it shows, the flags it takes, the calibration it reads, compute and draw.

    compute(ctx) -> data      a small dataclass; its fields are the figure's JSON (but those marked drawn())
    draw(axes, data)          one view: draws on a grid of panels; saved as <name><suffix>.<format>

The runner (lib.cli.run) computes, writes the JSON, draws each view and titles the figure: the model's title, what
the view plots in words (its `heading`) and the input it was computed on (the prompt, the calibration text and its
size, or the weights alone), so panel titles stay short. `summary` and `columns` are what the figure adds to the table across models
(lib.summary): the fields it takes from the figure's JSON, and the columns that show them.
"""
from dataclasses import dataclass, field, fields
from typing import Callable

from lib import plotting
from lib.outliers import CATEGORIES
from lib.text_numbers import sig


# the flag groups (lib.cli.FLAG_GROUPS) of the figures on the prompt and of those over calibration text
PROMPT_FLAGS = ("prompt", "layer", "rule")
CALIBRATION_FLAGS = ("calibration", "layer", "rule")


def drawn():
    """A field draw() reads that is not part of the JSON (an array to plot, a label)."""
    return field(default=None, repr=False, metadata={"json": False})


def optional():
    """A field in the JSON only when it is set."""
    return field(default=None, metadata={"json": "if set"})


@dataclass
class Unavailable:
    """What a figure writes when the model's family cannot give what it needs: no drawing, a summary saying why,
    and the keys a reader looks up, empty."""
    summary: list
    empty: dict = field(default_factory=dict)


def json_of(data) -> dict:
    if isinstance(data, Unavailable):
        return {**data.empty, "summary": data.summary}
    out = {}
    for f in fields(data):
        value = getattr(data, f.name)
        if f.metadata.get("json", True) is False or (f.metadata.get("json") == "if set" and value is None):
            continue
        out[f.name] = value
    return out


@dataclass(frozen=True)
class View:
    draw: Callable            # draw(axes, data)
    suffix: str = ""          # the file is <figure name><suffix>.<format>
    ncols: int = 1
    nrows: int = 1
    size: tuple = (5.0, 4.0)  # inches per panel
    three_d: bool | tuple = False  # True: every panel 3-D; a tuple: the indices of the 3-D panels
    heading: Callable | str = ""  # (data ->) what is plotted, in words: it follows the model's title in the title
    input: str | None = None  # the input it draws ("prompt", "calibration", "sequence", "weights"); default the figure's


@dataclass(frozen=True)
class Figure:
    name: str
    description: str
    flags: tuple                    # lib.cli.FLAG_GROUPS this figure takes beyond the model and output flags
    calibration: str | None         # the calibration settings it reads (lib.cli.CPU_DEFAULTS' kinds), or None
    compute: Callable               # compute(ctx) -> data (a dataclass) or Unavailable
    views: tuple                    # View, ...
    summary: Callable | None = None  # its JSON -> the fields it gives the summary row (lib.summary)
    columns: tuple = ()             # (header, row -> table cell), ... in the summary table
    dominant: bool = False          # a prompt figure: its JSON and summary also state the prompt's dominant outlier

    @property
    def input(self) -> str:
        """What the figure reads: "calibration" (text windows), "prompt", or "weights" (no input)."""
        return "calibration" if self.calibration else "prompt" if "prompt" in self.flags else "weights"

    def render(self, data, title: str, save, inputs: dict | None = None) -> None:
        """Draw every view of `data` under the model's title `title`; `inputs` describes each kind of input in words
        (lib.cli.figure_inputs); save(fig, stem) writes the files."""
        if isinstance(data, Unavailable):
            return
        for view in self.views:
            fig, axes = plotting.figure(view.ncols, view.nrows, view.size, view.three_d)
            view.draw(axes, data)
            heading = view.heading(data) if callable(view.heading) else view.heading or self.description
            plotting.title(fig, f"{title}: {heading}", (inputs or {}).get(view.input or self.input))
            save(fig, self.name + view.suffix)


# --- table cells of the summary --------------------------------------------------------------------------------

def cell(x) -> str:
    if x is None or x == []:
        return "-"
    if isinstance(x, float):
        return f"{sig(x)}"
    if isinstance(x, list):
        return ", ".join(str(v) for v in x)
    return str(x)


def shares(categories) -> str:
    """Token category shares as 'a% / b% / c% / d%' in CATEGORIES' order."""
    if not categories or not categories.get("count"):
        return "-"
    return " / ".join(f"{categories[k]:.0%}" for k in CATEGORIES)
