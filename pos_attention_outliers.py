"""pos_attention_outliers: cumulative attention, per-head outlier ratio and outlier-key categories. Options:
--help; logic in lib/paper_figures/."""
from lib.cli import main

if __name__ == "__main__":
    main("pos_attention_outliers")
