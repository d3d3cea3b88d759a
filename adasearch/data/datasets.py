"""Labelled evaluation sets, read in a fixed order: the built-in digits split, a .npz file, an image folder.

    load_data("digits:val")            in memory, already normalised
    load_data("arrays.npz")            in memory: x (N, C, H, W) float or uint8, y (N,) ints
    load_data("imagenet/val", img_size=224)
                                       one subfolder per class, images decoded lazily per batch

`img_size` and `channels` shape what an image folder produces. Arrays are taken at their own size, but
when `channels` is given, arrays with another channel count are refused naming the file. Arrays holding
NaN or infinity are refused; a set whose labels hold one class only gets a warning.
A `fingerprint()` names exactly which samples (and preprocessing) were read, so a measurement cache
can tell whether two runs saw the same data.
"""

from __future__ import annotations

import hashlib
import os
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from adasearch.data.digits import digits
from adasearch.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
# The released AdaPerceiver checkpoints were trained with CLIP's normalisation, not ImageNet's.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
GRAY_MEAN, GRAY_STD = (0.5,), (0.5,)
# Reference eval recipe: resize the shorter side to 256 for a 224 crop, i.e. crop = 87.5% of it.
RESIZE_RATIO = 256 / 224
ALLOWED = "allowed: 'digits', 'digits:train', 'digits:val', a .npz file or an image folder"
CHECK_CHUNK = 1 << 22  # elements checked for NaN/Inf at a time: the check never copies a whole big array

Batch = tuple[torch.Tensor, torch.Tensor]


class DataSource:
    """A labelled evaluation set read in a fixed order."""

    name: str
    num_classes_needed: int  # 1 + the largest label the set can hold

    def __len__(self) -> int:
        raise NotImplementedError

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """(x float32 (b, C, H, W), y int64 (b,)) in the same order on every call."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Hex digest of exactly these samples and their preprocessing; stable across processes."""
        raise NotImplementedError

    def labels(self) -> torch.Tensor:
        """All labels int64 (N,), in batch order; sources that know them without decoding override this."""
        return torch.cat([y for _, y in self.batches(256)])


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise UserError(f"batch size {batch_size}: must be >= 1")


class TensorSource(DataSource):
    """A set already in memory (digits, .npz): x float32 (N, C, H, W), y int64 (N,)."""

    def __init__(self, name: str, kind: str, x: torch.Tensor, y: torch.Tensor):
        self.name, self.kind = name, kind
        self.x, self.y = x.contiguous(), y.contiguous()
        self.num_classes_needed = int(y.max()) + 1
        self._fingerprint: Optional[str] = None

    def __len__(self) -> int:
        return len(self.y)

    def labels(self) -> torch.Tensor:
        return self.y

    def batches(self, batch_size: int) -> Iterator[Batch]:
        _check_batch_size(batch_size)
        for start in range(0, len(self.y), batch_size):
            yield self.x[start : start + batch_size], self.y[start : start + batch_size]

    def fingerprint(self) -> str:
        # The tensors never change after construction, so hashing them once is enough.
        if self._fingerprint is None:
            h = hashlib.sha256(f"{self.kind}|{tuple(self.x.shape)}|".encode())
            h.update(self.x.numpy().tobytes())
            h.update(self.y.numpy().tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint


class FolderSource(DataSource):
    """An image folder: one subfolder per class (sorted names -> labels 0..K-1), decoded per batch."""

    def __init__(self, root: Path, classes: list[str], files: list[tuple[str, int]], img_size: int, channels: int):
        self.name = f"folder:{root}"
        self.root, self.classes, self.files = root, classes, files  # files: (path relative to root, label)
        self.img_size, self.channels = img_size, channels
        # Every class folder counts, even an empty one, so labels keep matching the sorted names.
        self.num_classes_needed = len(classes)

    def __len__(self) -> int:
        return len(self.files)

    def labels(self) -> torch.Tensor:
        # from the file list: a cached accuracy table must not cost decoding every image again
        return torch.tensor([label for _, label in self.files], dtype=torch.long)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        _check_batch_size(batch_size)
        for start in range(0, len(self.files), batch_size):
            chunk = self.files[start : start + batch_size]
            x = torch.stack([self._read(rel) for rel, _ in chunk])
            yield x, torch.tensor([label for _, label in chunk], dtype=torch.long)

    def _read(self, rel: str) -> torch.Tensor:
        path = self.root / rel
        try:
            with Image.open(path) as img:
                return preprocess_image(img, self.img_size, self.channels)
        # OSError covers unreadable, truncated and unidentifiable files; ValueError odd pixel modes.
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise UserError(f"image {path}: cannot be read as an image ({e})") from None

    def fingerprint(self) -> str:
        # Size and mtime stand in for the pixels: hashing 50k JPEGs would cost as much as reading them.
        h = hashlib.sha256(f"folder|{self.img_size}|{self.channels}|{self.classes}|".encode())
        for rel, _ in self.files:
            try:
                st = (self.root / rel).stat()
            except OSError:
                raise UserError(f"image {self.root / rel}: no longer exists") from None
            h.update(f"{rel}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return h.hexdigest()


def resized_size(w: int, h: int, img_size: int) -> tuple[int, int]:
    """The (w, h) a w x h image is resized to before the centre crop: the shorter side to
    round(img_size * 256/224); the longer side truncates, as torchvision's Resize does."""
    short = round(img_size * RESIZE_RATIO)
    return (short, int(short * h / w)) if w <= h else (int(short * w / h), short)


def preprocess_image(img: Image.Image, img_size: int, channels: int) -> torch.Tensor:
    """Reference ImageNet eval recipe -> (channels, img_size, img_size) float32, CLIP-normalised."""
    img = img.convert("L" if channels == 1 else "RGB")
    img = img.resize(resized_size(*img.size, img_size), Image.BILINEAR)  # Pillow antialiases when it shrinks
    w, h = img.size
    left, top = int(round((w - img_size) / 2.0)), int(round((h - img_size) / 2.0))
    img = img.crop((left, top, left + img_size, top + img_size))
    x = torch.from_numpy(np.array(img, dtype=np.uint8)).float() / 255.0
    x = x[None] if channels == 1 else x.permute(2, 0, 1)
    mean, std = (GRAY_MEAN, GRAY_STD) if channels == 1 else (CLIP_MEAN, CLIP_STD)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def _subsample(n: int, limit: Optional[int], seed: int) -> Optional[torch.Tensor]:
    """Sorted indices of a seeded random subset of `limit` of `n` samples; None means all of them."""
    if limit is None or limit >= n:
        return None
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[:limit].sort().values


def _check_channels(where: str, key: str, shape: tuple, channels: Optional[int]) -> None:
    if channels is not None and shape[1] != channels:
        raise UserError(
            f"{where}: array {key!r} has shape {shape}, {shape[1]} channel(s); the model takes "
            f"(N, {channels}, H, W), {channels} channel(s)"
        )


def _count_non_finite(x: np.ndarray) -> tuple[int, int, int]:
    """(NaN, infinite, finite but beyond float32's range) counts of an array, a few samples at a time."""
    if not np.issubdtype(x.dtype, np.floating):
        return 0, 0, 0  # uint8 and other integers cannot be NaN or infinite
    f32_max = float(np.finfo(np.float32).max)
    wide = x.dtype.itemsize > 4  # float64 values past float32's range turn infinite when converted
    rows = max(1, CHECK_CHUNK // max(1, x[0].size))  # slices along N are views: nothing big is copied
    nan = inf = big = 0
    for start in range(0, len(x), rows):
        chunk = x[start : start + rows]
        finite = np.isfinite(chunk)
        if not finite.all():
            n_nan = int(np.isnan(chunk).sum())
            nan, inf = nan + n_nan, inf + int(finite.size - np.count_nonzero(finite)) - n_nan
        if wide:
            big += int(np.count_nonzero(np.abs(chunk[finite]) > f32_max))
    return nan, inf, big


def _check_finite(path: Path, key: str, x: np.ndarray) -> None:
    nan, inf, big = _count_non_finite(x)
    if nan or inf or big:
        kinds = ((nan, "NaN"), (inf, "infinite"), (big, "beyond float32's range, infinite once read"))
        raise UserError(
            f"dataset {path}: array {key!r} is not finite in {nan + inf + big} of its {x.size} values "
            f"({', '.join(f'{n} {what}' for n, what in kinds if n)}); allowed finite pixels only"
        )


def _load_digits(split: str, limit: Optional[int], seed: int, channels: Optional[int]) -> TensorSource:
    if split not in ("train", "val"):
        raise UserError(f"dataset 'digits:{split}': unknown split; allowed 'digits:train' or 'digits:val'")
    x, y = digits(split)
    _check_channels(f"dataset 'digits:{split}'", "x", tuple(x.shape), channels)
    idx = _subsample(len(y), limit, seed)
    if idx is not None:
        x, y = x[idx], y[idx]
    return TensorSource(f"digits:{split}", f"digits:{split}", x, y)


def _load_npz(path: Path, limit: Optional[int], seed: int, channels: Optional[int]) -> TensorSource:
    try:
        f = np.load(path, allow_pickle=False)
        if not isinstance(f, np.lib.npyio.NpzFile):  # a bare .npy saved under a .npz name
            raise UserError(f"dataset {path}: holds a single array; allowed a .npz with arrays 'x' and 'y'")
        with f:
            keys = set(f.files)
            x_key = next((k for k in ("x", "images") if k in keys), None)
            y_key = next((k for k in ("y", "labels") if k in keys), None)
            if x_key is None or y_key is None:
                raise UserError(
                    f"dataset {path}: needs arrays 'x' and 'y' (or 'images' and 'labels'); found {sorted(keys)}"
                )
            x, y = f[x_key], f[y_key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # empty, not a zip, truncated, pickled
        raise UserError(f"dataset {path}: cannot be read as a .npz file ({type(e).__name__}: {e})") from None
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
        raise UserError(f"dataset {path}: arrays '{x_key}' and '{y_key}' must be numpy arrays saved with np.savez")
    if x.ndim != 4:
        raise UserError(f"dataset {path}: array '{x_key}' has shape {x.shape}; allowed (N, C, H, W)")
    if y.ndim != 1 or len(y) != len(x):
        raise UserError(
            f"dataset {path}: array '{y_key}' has shape {y.shape}; allowed ({len(x)},), one label per image"
        )
    if len(y) == 0:
        raise UserError(f"dataset {path}: has no samples")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise UserError(f"dataset {path}: array '{y_key}' must hold integer labels >= 0 (dtype {y.dtype})")
    if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
        raise UserError(f"dataset {path}: array '{x_key}' has dtype {x.dtype}; allowed float or uint8")
    _check_channels(f"dataset {path}", x_key, x.shape, channels)
    # The whole file, not only a --limit subset of it: a file holding NaN is broken wherever it is.
    _check_finite(path, x_key, x)
    # Subsample before converting, so only the chosen images are widened to float32.
    idx = _subsample(len(y), limit, seed)
    if idx is not None:
        x, y = x[idx.numpy()], y[idx.numpy()]
    xt = torch.from_numpy(np.ascontiguousarray(x))
    if x.dtype == np.uint8:
        # Raw pixels get the image-folder preprocessing (the demo's for 1 channel, CLIP's for 3); float
        # arrays are taken as already preprocessed.
        xt = xt.float() / 255.0
        if xt.shape[1] in (1, 3):
            mean, std = (GRAY_MEAN, GRAY_STD) if xt.shape[1] == 1 else (CLIP_MEAN, CLIP_STD)
            xt = (xt - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    else:
        xt = xt.float()
    return TensorSource(f"npz:{path}", "npz", xt, torch.from_numpy(y.astype(np.int64)))


def _is_image(name: str) -> bool:
    # Hidden files are skipped: macOS leaves '._x.jpg' metadata files that are not images.
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _load_folder(root: Path, limit: Optional[int], seed: int, img_size: int, channels: int) -> FolderSource:
    if channels not in (1, 3):
        raise UserError(f"dataset {root}: channels={channels}; an image folder gives 1 or 3")
    if img_size < 1:
        raise UserError(f"dataset {root}: img_size={img_size}; must be >= 1")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    files: list[tuple[str, int]] = []
    for label, cls in enumerate(classes):
        # Walk in sorted order so the sample order is the same on every filesystem.
        for dirpath, dirnames, filenames in os.walk(root / cls):
            dirnames.sort()
            rel_dir = Path(dirpath).relative_to(root)
            files += [((rel_dir / n).as_posix(), label) for n in sorted(filenames) if _is_image(n)]
    if not files:
        raise UserError(
            f"dataset {root}: no images found; allowed an image folder with one subfolder "
            f"per class holding {'/'.join(IMAGE_EXTENSIONS)} files"
        )
    idx = _subsample(len(files), limit, seed)
    if idx is not None:
        files = [files[i] for i in idx.tolist()]
    return FolderSource(root, classes, files, img_size, channels)


def load_data(
    spec: str, *, limit: Optional[int] = None, seed: int = 0, img_size: int = 224, channels: Optional[int] = None
) -> DataSource:
    """Open a dataset spec: 'digits[:train|:val]', a .npz file or an image folder.

    `limit` keeps a seeded random subset of that many samples (sorted, so the order stays fixed).
    `channels`: what the model takes. An image folder is decoded to it (3 when None); arrays with another
    channel count are refused (any count is taken when None).
    """
    if limit is not None and limit < 1:
        raise UserError(f"dataset {spec}: limit={limit}; must be >= 1")
    path = Path(os.path.expanduser(spec))
    data: DataSource
    if spec == "digits" or spec.startswith("digits:"):
        data = _load_digits(spec.partition(":")[2] or "val", limit, seed, channels)
    elif path.is_dir():
        data = _load_folder(path, limit, seed, img_size, 3 if channels is None else channels)
    elif path.is_file() and path.suffix.lower() == ".npz":
        data = _load_npz(path, limit, seed, channels)
    elif path.exists():
        raise UserError(f"dataset {spec}: not a .npz file or a folder; {ALLOWED}")
    else:
        raise UserError(f"no such dataset {spec!r}: {ALLOWED}")
    classes = torch.unique(data.labels())
    if len(classes) == 1:
        label = int(classes[0])
        samples = f"all {len(data)} samples have" if len(data) > 1 else "its one sample has"
        warnings.warn(  # stacklevel=2: the warning points at whoever asked for this data
            f"dataset {spec}: {samples} label {label}, one class only; accuracy on it cannot tell a good "
            f"model from one that always answers {label}",
            stacklevel=2,
        )
    return data


def check_labels(data: DataSource, num_classes: int, where: str) -> None:
    """Refuse a dataset whose labels the model cannot output (accuracy would be silently capped)."""
    if data.num_classes_needed > num_classes:
        raise UserError(
            f"{where}: labels of {data.name} go up to {data.num_classes_needed - 1} "
            f"but the model has num_classes={num_classes}"
        )
