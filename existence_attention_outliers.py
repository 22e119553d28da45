"""existence_attention_outliers: head-averaged attention on the prompt at the layer after the outliers appear.
Options: --help; logic in lib/paper_figures/."""
from lib.cli import main

if __name__ == "__main__":
    main("existence_attention_outliers")
