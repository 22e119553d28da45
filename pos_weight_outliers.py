"""pos_weight_outliers: down_proj column ratios per layer, module scores and top columns. Options: --help; logic
in lib/paper_figures/."""
from lib.cli import main

if __name__ == "__main__":
    main("pos_weight_outliers")
