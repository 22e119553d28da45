"""lifecycle_spread: how attention reads the outlier tokens (q, k, v norms, logits, probabilities). Options:
--help; logic in lib/paper_figures/."""
from lib.cli import main

if __name__ == "__main__":
    main("lifecycle_spread")
