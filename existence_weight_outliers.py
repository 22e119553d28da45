"""existence_weight_outliers: 3-D view of down_proj columns, including the outlier column. Options: --help; logic
in lib/paper_figures/."""
from lib.cli import main

if __name__ == "__main__":
    main("existence_weight_outliers")
