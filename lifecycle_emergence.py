"""lifecycle_emergence: how the first activation outlier is written by the MLP. Options: --help; logic in
lib/paper_figures/."""
from lib.cli import main

if __name__ == "__main__":
    main("lifecycle_emergence")
