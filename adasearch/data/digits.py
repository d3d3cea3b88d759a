"""sklearn's 8x8 digits (bundled with scikit-learn, so offline): the demo model's data.

The split is fixed (stratified, seed 0) so the demo's accuracy table is reproducible.
"""

from __future__ import annotations

from functools import cache

import torch

VAL_FRACTION = 0.25
SPLIT_SEED = 0
# Pixels are 0..16; scale to [0, 1] then centre, as the demo model was trained.
MEAN, STD = 0.5, 0.5


@cache
def _split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    x = (x - MEAN) / STD
    y = torch.tensor(digits.target, dtype=torch.long)
    idx = torch.arange(len(y)).numpy()
    train_idx, val_idx = train_test_split(idx, test_size=VAL_FRACTION, random_state=SPLIT_SEED, stratify=y.numpy())
    return (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx])


def digits(split: str = "val"):
    """(images (N, 1, 8, 8) float32 normalised, labels (N,) int64) of the fixed 'train' or 'val' split."""
    if split not in ("train", "val"):
        raise ValueError(f"digits split {split!r}: allowed 'train' or 'val'")
    train, val = _split()
    x, y = train if split == "train" else val
    return x.clone(), y.clone()
