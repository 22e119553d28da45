"""pos_activation_outliers_layer: per-layer top-1/2/3 and median of layer outputs over calibration text, top
channels, token categories and a 3-D view. Options: --help; logic in lib/paper_figures/."""
from lib.cli import main

if __name__ == "__main__":
    main("pos_activation_outliers_layer")
