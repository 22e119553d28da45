"""pos_compression: per-layer matrix entropy of the layer output (the compression valley), beside the outlier
token's norm and the sink rate. Options: --help; logic in lib/paper_figures/."""
from lib.cli import main

if __name__ == "__main__":
    main("pos_compression")
