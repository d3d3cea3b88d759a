"""Datasets: digits, .npz arrays and image folders, their order, subsets, fingerprints and errors."""

import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from adasearch.data.datasets import CLIP_MEAN, CLIP_STD, DataSource, check_labels, load_data, preprocess_image
from adasearch.errors import UserError

MEAN = torch.tensor(CLIP_MEAN)
STD = torch.tensor(CLIP_STD)
WHITE = (1 - MEAN) / STD  # a white pixel after CLIP normalisation, per channel
# Class folders are created out of order on purpose: labels must follow the sorted names.
CLASSES = ["cat", "ant", "bee"]
SIZES = [(40, 30), (30, 50), (64, 64), (17, 23)]
SUFFIXES = [".png", ".jpg", ".JPEG", ".png"]


def write_folder(root):
    """3 classes x 4 images of different sizes and formats, plus files the loader must skip."""
    for c, cls in enumerate(CLASSES):
        (root / cls).mkdir(parents=True)
        for i, (size, suffix) in enumerate(zip(SIZES, SUFFIXES)):
            Image.new("RGB", size, (40 * c, 60 * i, 100)).save(root / cls / f"img{i}{suffix}")
        (root / cls / "notes.txt").write_text("not an image")
        (root / cls / "._img0.png").write_bytes(b"macOS metadata, not an image")
    return root


def all_batches(data, batch_size=5):
    xs, ys = zip(*data.batches(batch_size))
    return torch.cat(xs), torch.cat(ys)


def write_npz(path, n=20, **arrays):
    # Each image is filled with its own index, so a batch shows which samples were chosen.
    x = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 2, 3, 3)).copy()
    y = np.arange(n) % 4
    np.savez(path, **(arrays or {"x": x, "y": y}))
    return path


@pytest.fixture
def folder(tmp_path):
    return write_folder(tmp_path / "imgs")


# ---- image folders -------------------------------------------------------------------------------


def test_folder_shapes_and_sorted_labels(folder):
    data = load_data(str(folder), img_size=16)
    assert isinstance(data, DataSource)
    assert len(data) == 12 and data.num_classes_needed == 3
    assert data.name == f"folder:{folder}"
    shapes = [(tuple(x.shape), tuple(y.shape)) for x, y in data.batches(5)]
    assert shapes == [((5, 3, 16, 16), (5,)), ((5, 3, 16, 16), (5,)), ((2, 3, 16, 16), (2,))]
    x, y = all_batches(data)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    # ant=0, bee=1, cat=2, four images each in file-name order.
    assert y.tolist() == [0] * 4 + [1] * 4 + [2] * 4


def test_folder_order_is_deterministic(folder):
    x1, y1 = all_batches(load_data(str(folder), img_size=16), batch_size=5)
    data = load_data(str(folder), img_size=16)
    x2, y2 = all_batches(data, batch_size=3)
    x3, _ = all_batches(data, batch_size=12)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(x2, x3)


def test_folder_channels_one(folder):
    x, _ = next(load_data(str(folder), img_size=8, channels=1).batches(4))
    assert x.shape == (4, 1, 8, 8)


def test_folder_limit_and_fingerprint(folder):
    spec = str(folder)
    full = load_data(spec, img_size=16)
    a, b = load_data(spec, limit=5, seed=0, img_size=16), load_data(spec, limit=5, seed=0, img_size=16)
    other_seed = load_data(spec, limit=5, seed=1, img_size=16)
    assert len(a) == 5
    assert torch.equal(all_batches(a)[0], all_batches(b)[0])
    assert not torch.equal(all_batches(a)[0], all_batches(other_seed)[0])
    assert a.fingerprint() == b.fingerprint()
    assert (
        len(
            {
                full.fingerprint(),
                a.fingerprint(),
                other_seed.fingerprint(),
                load_data(spec, limit=6, img_size=16).fingerprint(),
                load_data(spec, img_size=24).fingerprint(),
                load_data(spec, img_size=16, channels=1).fingerprint(),
            }
        )
        == 6
    )
    # A limit of the whole set or more is the whole set.
    assert load_data(spec, limit=12, img_size=16).fingerprint() == full.fingerprint()
    assert len(load_data(spec, limit=99, img_size=16)) == 12
    # A rewritten file is different data.
    before = full.fingerprint()
    st = (folder / "ant" / "img0.png").stat()
    os.utime(folder / "ant" / "img0.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert full.fingerprint() != before


# ---- preprocessing -------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:.*one class only")  # a folder of one image
def test_center_crop_keeps_the_middle(tmp_path):
    # Wide image: only the middle half is white. Resize alone would keep black at the sides;
    # a centre crop of the resized image lies wholly inside the white band.
    img = np.zeros((20, 80, 3), np.uint8)
    img[:, 20:60] = 255
    out = preprocess_image(Image.fromarray(img), img_size=8, channels=3)
    assert out.shape == (3, 8, 8) and out.dtype == torch.float32
    assert torch.allclose(out, WHITE[:, None, None].expand(3, 8, 8), atol=1e-5)

    # Square image with a white centre and a black border: the centre pixel is normalised white.
    (tmp_path / "c" / "k").mkdir(parents=True)
    img = np.zeros((64, 64, 3), np.uint8)
    img[16:48, 16:48] = 255
    Image.fromarray(img).save(tmp_path / "c" / "k" / "a.png")
    x, _ = next(load_data(str(tmp_path / "c"), img_size=16).batches(1))
    assert torch.allclose(x[0, :, 8, 8], WHITE, atol=1e-5)
    assert (x[0, :, 0, 0] < x[0, :, 8, 8]).all()  # the border is still dark


def test_normalisation_constants():
    assert CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert CLIP_STD == (0.26862954, 0.26130258, 0.27577711)
    gray = Image.new("RGB", (30, 50), (51, 102, 204))
    out = preprocess_image(gray, img_size=10, channels=3)
    expected = (torch.tensor([51, 102, 204]) / 255.0 - MEAN) / STD
    assert torch.allclose(out[:, 5, 5], expected, atol=1e-5)
    out = preprocess_image(Image.new("L", (50, 30), 51), img_size=10, channels=1)
    assert out.shape == (1, 10, 10)
    assert torch.allclose(out, torch.full((1, 10, 10), (51 / 255.0 - 0.5) / 0.5), atol=1e-5)


def test_preprocess_resizes_shorter_side_like_the_reference():
    # 224 -> shorter side 256; a tall 300x600 image becomes 256x512 and then a 224 crop.
    img = Image.new("RGBA", (300, 600), (255, 255, 255, 255))
    assert preprocess_image(img, img_size=224, channels=3).shape == (3, 224, 224)
    # Smaller than the crop: it is upscaled first, never padded.
    assert preprocess_image(Image.new("RGB", (5, 3)), img_size=32, channels=3).shape == (3, 32, 32)


# ---- .npz and digits -----------------------------------------------------------------------------


def test_npz_float_and_limit(tmp_path):
    path = write_npz(tmp_path / "a.npz")
    data = load_data(str(path))
    x, y = all_batches(data, batch_size=7)
    assert x.shape == (20, 2, 3, 3) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert data.num_classes_needed == 4 and data.name == f"npz:{path}"
    sub = load_data(str(path), limit=6, seed=3)
    chosen = all_batches(sub)[0][:, 0, 0, 0].long().tolist()
    assert len(chosen) == 6 and chosen == sorted(set(chosen))
    assert all_batches(load_data(str(path), limit=6, seed=3))[0][:, 0, 0, 0].long().tolist() == chosen
    assert all_batches(load_data(str(path), limit=6, seed=4))[0][:, 0, 0, 0].long().tolist() != chosen
    assert sub.fingerprint() == load_data(str(path), limit=6, seed=3).fingerprint()
    assert (
        len(
            {
                data.fingerprint(),
                sub.fingerprint(),
                load_data(str(path), limit=6, seed=4).fingerprint(),
                load_data(str(path), limit=5, seed=3).fingerprint(),
            }
        )
        == 4
    )


def test_npz_uint8_and_alternative_keys(tmp_path):
    x = np.full((3, 1, 4, 4), 255, np.uint8)
    x[1] = 0
    path = write_npz(tmp_path / "b.npz", images=x, labels=np.array([0, 6, 2], np.int32))
    data = load_data(str(path))
    xb, yb = next(data.batches(8))
    assert torch.equal(xb[:, 0, 0, 0], torch.tensor([1.0, -1.0, 1.0]))  # /255, then the gray mean/std (0.5, 0.5)
    assert yb.tolist() == [0, 6, 2] and yb.dtype == torch.int64
    assert data.num_classes_needed == 7


def test_digits():
    data = load_data("digits")
    assert data.name == "digits:val" and len(data) == 450 and data.num_classes_needed == 10
    x, y = next(data.batches(64))
    assert x.shape == (64, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert load_data("digits:val").fingerprint() == data.fingerprint()
    assert load_data("digits:train").fingerprint() != data.fingerprint()
    assert len(load_data("digits:train", limit=100)) == 100


# ---- errors --------------------------------------------------------------------------------------


def raises_naming(what, fn):
    with pytest.raises(UserError) as info:
        fn()
    message = str(info.value)
    assert str(what) in message and "\n" not in message
    return message


def test_errors_for_bad_specs(tmp_path, folder):
    missing = tmp_path / "nope"
    assert "no such dataset" in raises_naming(missing, lambda: load_data(str(missing)))
    assert "'digits'" in raises_naming("cifar10", lambda: load_data("cifar10"))
    raises_naming("digits:test", lambda: load_data("digits:test"))
    csv = tmp_path / "data.csv"
    csv.write_text("1,2\n")
    assert "image folder" in raises_naming(csv, lambda: load_data(str(csv)))
    assert "limit=0" in raises_naming(folder, lambda: load_data(str(folder), limit=0))


def test_errors_for_bad_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    raises_naming(empty, lambda: load_data(str(empty)))
    flat = tmp_path / "flat"  # images but no class subfolders
    flat.mkdir()
    Image.new("RGB", (8, 8)).save(flat / "a.png")
    raises_naming(flat, lambda: load_data(str(flat)))
    no_images = tmp_path / "no_images"
    (no_images / "cls").mkdir(parents=True)
    (no_images / "cls" / "readme.txt").write_text("x")
    raises_naming(no_images, lambda: load_data(str(no_images)))


def test_corrupt_image_raises_when_its_batch_is_read(folder):
    bad = folder / "bee" / "zzz.jpg"
    bad.write_bytes(b"this is not a jpeg at all")
    data = load_data(str(folder), img_size=8)  # listing the folder reads no pixels
    batches = data.batches(4)
    next(batches), next(batches)  # ant and the good bee images
    raises_naming(bad, lambda: next(batches))


def test_errors_for_bad_npz(tmp_path):
    cases = {
        "keys.npz": {"a": np.zeros((2, 1, 2, 2)), "b": np.zeros(2)},
        "ndim.npz": {"x": np.zeros((2, 4)), "y": np.zeros(2, int)},
        "len.npz": {"x": np.zeros((3, 1, 2, 2)), "y": np.zeros(2, int)},
        "labels.npz": {"x": np.zeros((2, 1, 2, 2)), "y": np.array([0.5, 1.0])},
    }
    for name, arrays in cases.items():
        path = write_npz(tmp_path / name, **arrays)
        raises_naming(path, lambda path=path: load_data(str(path)))
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file")
    raises_naming(garbage, lambda: load_data(str(garbage)))
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")  # EOFError inside numpy
    raises_naming(empty, lambda: load_data(str(empty)))
    good = write_npz(tmp_path / "good.npz").read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good[: len(good) // 2])  # zipfile.BadZipFile
    raises_naming(truncated, lambda: load_data(str(truncated)))


def test_check_labels(tmp_path, folder):
    data = load_data(str(folder))
    check_labels(data, 3, "model.safetensors")
    message = raises_naming("model.safetensors", lambda: check_labels(data, 2, "model.safetensors"))
    assert "up to 2" in message and "num_classes=2" in message


def test_folder_labels_need_no_decoding(folder, monkeypatch):
    """A cached accuracy table must not cost decoding the whole folder again just for its labels."""
    from adasearch.data.datasets import FolderSource

    data = load_data(str(folder), img_size=8, channels=3)
    expected = all_batches(data)[1]
    monkeypatch.setattr(FolderSource, "_read", lambda self, rel: pytest.fail("decoded an image"))
    assert torch.equal(data.labels(), expected)


def test_uint8_npz_gets_the_same_preprocessing_as_the_builtin_digits(tmp_path):
    """Saving the demo's own images as raw uint8 pixels must not change what the model sees."""
    from sklearn.datasets import load_digits

    from adasearch.data.digits import digits

    raw = load_digits()
    pixels = np.round(raw.images * 255 / 16).astype(np.uint8)[:, None]  # 0..16 -> 0..255
    path = write_npz(tmp_path / "d.npz", x=pixels, y=raw.target)
    x = torch.cat([xb for xb, _ in load_data(str(path)).batches(512)])
    expected = (torch.tensor(raw.images, dtype=torch.float32)[:, None] / 16.0 - 0.5) / 0.5
    assert torch.allclose(x, expected, atol=2 / 255)  # only 8-bit rounding apart
    assert digits("val")[0].min() >= -1 and digits("val")[0].max() <= 1


# ---- data that cannot be right -------------------------------------------------------------------


def _images(n=20, value=0.0, dtype=np.float32):
    return np.full((n, 2, 3, 3), value, dtype)


@pytest.mark.parametrize(
    "x,found",
    [
        (_images(value=np.nan), "360 of its 360 values (360 NaN)"),  # the tracker's file: top-1 1.000 on NaN
        (np.where(np.arange(360).reshape(20, 2, 3, 3) == 200, np.inf, _images()), "1 of its 360 values (1 infinite)"),
        (np.where(np.arange(360).reshape(20, 2, 3, 3) == 7, -np.inf, _images(dtype=np.float16)), "(1 infinite)"),
        (np.where(np.arange(360).reshape(20, 2, 3, 3) == 9, 1e300, _images(dtype=np.float64)), "float32's range"),
    ],
)
def test_npz_with_nan_or_inf_is_refused(tmp_path, x, found):
    path = write_npz(tmp_path / "bad.npz", x=x, y=np.arange(20) % 4)
    message = raises_naming(path, lambda: load_data(str(path)))
    assert found in message and "finite" in message
    # A --limit subset is no way round it: the file is broken wherever the NaN is.
    raises_naming(path, lambda: load_data(str(path), limit=2))


def test_npz_nan_check_reads_the_array_in_chunks(tmp_path, monkeypatch):
    import adasearch.data.datasets as datasets

    x = _images()
    x[17, 1, 2, 2] = np.nan
    path = write_npz(tmp_path / "late.npz", x=x, y=np.arange(20) % 4)
    monkeypatch.setattr(datasets, "CHECK_CHUNK", 18)  # one image at a time
    seen, isfinite = [], np.isfinite
    monkeypatch.setattr(np, "isfinite", lambda a: seen.append(a.size) or isfinite(a))
    assert "(1 NaN)" in raises_naming(path, lambda: load_data(str(path)))
    assert seen and max(seen) == 18  # never a copy the size of the whole array
    assert len(load_data(str(write_npz(tmp_path / "good.npz")))) == 20
    u8 = write_npz(tmp_path / "u8.npz", x=np.full((4, 1, 2, 2), 255, np.uint8), y=np.arange(4))
    assert len(load_data(str(u8))) == 4  # uint8 cannot be NaN: nothing to check


def test_one_class_warns_naming_the_file(tmp_path, folder):
    path = write_npz(tmp_path / "one.npz", x=_images(), y=np.full(20, 3))
    with pytest.warns(UserWarning, match="one class only") as record:
        data = load_data(str(path))
    assert len(record) == 1 and str(path) in str(record[0].message) and "label 3" in str(record[0].message)
    assert record[0].filename == __file__  # stacklevel=2: it points at the caller of load_data
    assert len(data) == 20  # a warning, not a refusal
    for cls in ("ant", "bee"):  # a folder whose other classes are empty is one class too
        for f in (folder / cls).iterdir():
            f.unlink()
    with pytest.warns(UserWarning, match="one class only"):
        load_data(str(folder), img_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # two classes: no warning
        load_data(str(write_npz(tmp_path / "two.npz", x=_images(), y=np.arange(20) % 2)))


def test_npz_with_the_wrong_channels_names_the_file(tmp_path):
    path = write_npz(tmp_path / "rgb.npz", x=np.zeros((4, 3, 8, 8), np.uint8), y=np.arange(4))
    message = raises_naming(path, lambda: load_data(str(path), img_size=8, channels=1))
    assert "3 channel(s)" in message and "(N, 1, H, W)" in message
    assert len(load_data(str(path), channels=3)) == 4 and len(load_data(str(path))) == 4  # None: any count
    assert "digits" in raises_naming("digits:val", lambda: load_data("digits", channels=3))


def test_wrong_channel_npz_through_measure_names_the_file(tmp_path):
    """The tracker's case end to end: the model's own shape error used to reach the user without the file."""
    from click.testing import CliRunner

    from adasearch.cli import main

    path = write_npz(tmp_path / "rgb.npz", x=np.zeros((4, 3, 8, 8), np.float32), y=np.arange(4))
    result = CliRunner().invoke(main, ["measure", "demo", "--data", str(path), "--cache-dir", str(tmp_path / "c")])
    assert result.exit_code == 2, result.output
    assert str(path) in result.output and "channel" in result.output and "Traceback" not in result.output
