"""systematic-outliers library: models, data, outlier statistics, evaluation and plotting."""
