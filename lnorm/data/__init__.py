"""Datasets of the paper's experiments: TFDS builders over the canonical files, grain pipelines."""
