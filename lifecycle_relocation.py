"""lifecycle_relocation: where the outlier and the sink go when the outlier token is masked as a key. Options: --help;
logic in lib/paper_figures/."""
from lib.cli import main

if __name__ == "__main__":
    main("lifecycle_relocation")
