"""pos_activation_outliers_down: per-layer top-1/2/3 and median of down_proj inputs over calibration text.
Options: --help; logic in lib/paper_figures/."""
from lib.cli import main

if __name__ == "__main__":
    main("pos_activation_outliers_down")
