"""existence_activation_outliers_layer: 3-D view of a layer output on the prompt at the first layer with
outliers. Options: --help; logic in lib/paper_figures/."""
from lib.cli import main

if __name__ == "__main__":
    main("existence_activation_outliers_layer")
