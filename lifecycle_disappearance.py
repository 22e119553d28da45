"""lifecycle_disappearance: how the last layers cancel the outlier. Options: --help; logic in lib/paper_figures/."""
from lib.cli import main

if __name__ == "__main__":
    main("lifecycle_disappearance")
