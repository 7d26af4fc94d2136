"""Data on disk: Kaggle CSVs, images, datasets and transforms, synthetic data, safe outputs, the run folder."""
