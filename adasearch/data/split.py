"""The held-out split: images that choose the front (search) and images that report on it (held-out).

Deterministic (seeded), disjoint, and stratified by class: each class gives fraction * its count images
(rounded half up) to the held-out part, drawn with a generator seeded by data.seed, so every run on the same data
splits alike and the accuracy cache keys each part by its own samples.
"""

from __future__ import annotations

import math

import torch

from adasearch.data.datasets import DataSource, FolderSource, TensorSource
from adasearch.errors import UserError

MIN_HELDOUT = 20  # images: fewer cannot say anything with an interval worth printing


def subset(data: DataSource, indices: torch.Tensor, part: str) -> DataSource:
    """The samples at `indices` (in their original order) as a source of the same kind."""
    idx = indices.sort().values
    if isinstance(data, TensorSource):
        return TensorSource(f"{data.name}[{part}]", f"{data.kind}[{part}]", data.x[idx], data.y[idx])
    if isinstance(data, FolderSource):
        out = FolderSource(data.root, data.classes, [data.files[i] for i in idx.tolist()], data.img_size,
                           data.channels)  # fmt: skip
        out.name = f"{data.name}[{part}]"
        return out
    raise UserError(f"dataset {data.name}: cannot be split into search and held-out parts")


def holdout_split(data: DataSource, fraction: float, seed: int, where: str = "data.holdout") -> tuple:
    """(search part, held-out part). fraction 0: (data, None)."""
    if not 0 <= fraction <= 0.9:
        raise UserError(f"{where}: {fraction} is not allowed; a fraction in [0, 0.9] (0 turns it off)")
    if fraction == 0:
        return data, None
    labels = data.labels()
    gen = torch.Generator().manual_seed(seed)
    held = []
    for cls in torch.unique(labels).tolist():
        members = (labels == cls).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        held.append(members[: math.floor(fraction * len(members) + 0.5)])  # half up: a lone image is held out
    held_idx = torch.cat(held)
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[held_idx] = False
    search_idx = mask.nonzero().flatten()
    classes = torch.unique(labels)
    missing = [c for c in classes.tolist() if not (labels[held_idx] == c).any()]
    if len(held_idx) < MIN_HELDOUT or missing:
        why = f"class {missing[0]} gets no image" if missing else f"it gets {len(held_idx)} images"
        raise UserError(
            f"{where}: {fraction} of {len(labels)} images is too small a held-out part ({why}); it needs at least "
            f"{MIN_HELDOUT} images and one per class: raise holdout or data.limit, or set holdout: 0"
        )
    if len(search_idx) == 0:
        raise UserError(f"{where}: {fraction} leaves no image to search on")
    return subset(data, search_idx, "search"), subset(data, held_idx, "held-out")


def shards(data: DataSource, count: int) -> list:
    """`count` contiguous parts of `data` in its order (sizes differ by at most one, none empty): what
    one accuracy pass splits into across Ray tasks. Joined in this order, they are `data` again."""
    n = len(data)
    count = max(1, min(count, n))
    bounds = [n * i // count for i in range(count + 1)]
    return [subset(data, torch.arange(a, b), f"{a}:{b}") for a, b in zip(bounds, bounds[1:])]
