"""Datasets the evaluator reads: the built-in digits split, image folders, .npz arrays."""
