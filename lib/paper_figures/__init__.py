"""Every figure, registered once (lib/paper_figures/figure.py says what a Figure is), in the order of the index
page and the summary table. The figure scripts, reproduce.py, the index page, the summary and lib.cli's flag
checks all read FIGURES. A new figure: its dataclass, compute, draw and Figure in one module here, and a
six-line script that calls lib.cli.main with its name.
"""
from lib.paper_figures import existence, lifecycle, position, relocation, valley

FIGURES = {figure.name: figure for figure in existence.FIGURES + position.FIGURES + lifecycle.FIGURES + relocation.FIGURES
           + valley.FIGURES}
