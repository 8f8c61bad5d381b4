"""Training data: the digits, MNIST IDX files, CIFAR-10 python batches (and pickles that must
not run), image folders and .npz files, each shaped for a spec's input or refused with a
message that says what is wrong with which file.

Every dataset here is written by the test in the real on-disk format, small.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import os
import pickle
import struct

import numpy as np
import pytest

from cnncompiler.errors import InputError
from cnncompiler.train.data import fit_images, load_data, resize_bilinear

HAVE_SKLEARN = importlib.util.find_spec("sklearn") is not None
HAVE_PIL = importlib.util.find_spec("PIL") is not None
HAVE_TORCH = importlib.util.find_spec("torch") is not None
needs_sklearn = pytest.mark.skipif(not HAVE_SKLEARN, reason="scikit-learn is not installed "
                                   "(the digits dataset ships with it)")
needs_pil = pytest.mark.skipif(not HAVE_PIL, reason="Pillow is not installed (image folders "
                               "need it)")


# -- the digits ------------------------------------------------------------------------------------

@needs_sklearn
def test_digits_resized_to_32x32():
    data = load_data("digits", (1, 32, 32))
    assert data.x_train.shape == (1348, 1, 32, 32) and data.x_test.shape == (449, 1, 32, 32)
    assert data.x_train.dtype == np.float32 and data.x_train.flags.c_contiguous
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    assert data.classes == [str(i) for i in range(10)]
    assert set(np.unique(data.y_train)) == set(range(10))
    assert data.describe() == ("digits: 1348 training and 449 test samples of (1, 32, 32), "
                               "10 classes")


@needs_sklearn
def test_digits_split_is_fixed_and_follows_the_seed():
    a, b = load_data("digits", (1, 8, 8)), load_data("digits", (1, 8, 8))
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    other = load_data("digits", (1, 8, 8), seed=1)
    assert not np.array_equal(a.y_test, other.y_test)
    from sklearn.datasets import load_digits

    digits = load_digits()  # at their own size the images are only scaled to [0, 1]
    everything = np.concatenate([a.x_train, a.x_test])[:, 0]
    assert sorted(map(bytes, everything)) == sorted(map(bytes, (digits.images / 16.0)
                                                        .astype(np.float32)))
    smaller = load_data("digits", (1, 8, 8), test_fraction=0.1)
    assert len(smaller.x_test) == 180


@needs_sklearn
def test_digits_to_three_channels():
    data = load_data("digits", (3, 16, 16))
    assert data.x_train.shape[1:] == (3, 16, 16)
    np.testing.assert_array_equal(data.x_train[:, 0], data.x_train[:, 2])


@pytest.mark.skipif(not HAVE_TORCH, reason="PyTorch is not installed")
@pytest.mark.parametrize("size", [(32, 32), (5, 7), (8, 8), (13, 4)])
def test_resize_matches_pytorch_bilinear(size):
    import torch

    x = np.random.default_rng(0).random((2, 3, 8, 8)).astype(np.float32)
    want = torch.nn.functional.interpolate(torch.from_numpy(x), size=size, mode="bilinear",
                                           align_corners=False).numpy()
    np.testing.assert_allclose(resize_bilinear(x, *size), want, rtol=1e-5, atol=1e-6)


def test_rgb_to_grayscale_uses_luma():
    x = np.zeros((1, 3, 2, 2), np.float32)
    x[:, 0] = 1.0
    np.testing.assert_allclose(fit_images(x, (1, 2, 2)), 0.299)


@pytest.mark.parametrize("shape, message", [
    ((1, 16), "image data needs a 2-D net with input [C, H, W]; this spec's input is [1, 16]"),
    ((2, 8, 8), "images have 1 channels; the spec wants 2"),
])
def test_images_refuse_an_input_they_cannot_fill(shape, message):
    with pytest.raises(InputError) as info:
        fit_images(np.zeros((2, 1, 8, 8), np.float32), shape)
    assert message in str(info.value)


def test_unknown_source_is_refused(tmp_path):
    with pytest.raises(InputError, match="no dataset at '.*nowhere': give 'digits', an .npz"):
        load_data(str(tmp_path / "nowhere"), (1, 8, 8))
    (tmp_path / "data.csv").write_text("1,2,3\n")
    with pytest.raises(InputError, match="a dataset file must be .npz"):
        load_data(str(tmp_path / "data.csv"), (1, 8, 8))


# -- MNIST IDX files -------------------------------------------------------------------------------

def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(directory, compress: bool, n_train: int = 12, n_test: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test)}
    directory.mkdir(exist_ok=True)
    for name, arr in arrays.items():
        data = idx_bytes(arr)
        if compress:
            (directory / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (directory / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
def test_mnist_idx_files(tmp_path, compress):
    arrays = write_mnist(tmp_path / "mnist", compress)
    data = load_data(str(tmp_path / "mnist"), (1, 28, 28))
    np.testing.assert_allclose(data.x_train[:, 0], arrays["train-images-idx3-ubyte"] / 255,
                               rtol=1e-6)
    np.testing.assert_array_equal(data.y_train, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(data.y_test, arrays["t10k-labels-idx1-ubyte"])
    assert data.x_test.shape == (5, 1, 28, 28) and data.x_test.dtype == np.float32
    assert data.name == "mnist"


def test_mnist_resized_and_coloured_for_the_spec(tmp_path):
    write_mnist(tmp_path / "mnist", compress=True)
    data = load_data(str(tmp_path / "mnist"), (3, 32, 32))
    assert data.x_train.shape == (12, 3, 32, 32)
    small = load_data(str(tmp_path / "mnist"), (1, 28, 28))
    np.testing.assert_allclose(data.x_train[:, 1], resize_bilinear(small.x_train, 32, 32)[:, 0])


def test_mnist_dotted_file_names(tmp_path):
    arrays = write_mnist(tmp_path / "mnist", compress=False)
    for name in arrays:
        (tmp_path / "mnist" / name).rename(tmp_path / "mnist" / name.replace("-idx", ".idx"))
    assert load_data(str(tmp_path / "mnist"), (1, 28, 28)).x_train.shape == (12, 1, 28, 28)


def _rewrite(path, change):
    path.write_bytes(change(path.read_bytes()))


IDX_DAMAGE = {
    "bad magic": ("train-images-idx3-ubyte", lambda b: b"\x01" + b[1:],
                  "not an IDX file (bad magic number)"),
    "truncated": ("train-images-idx3-ubyte", lambda b: b[:-10],
                  "truncated IDX file (9398 values for shape (12, 28, 28))"),
    "truncated header": ("train-images-idx3-ubyte", lambda b: b[:9], "truncated IDX header"),
    "not bytes": ("t10k-labels-idx1-ubyte", lambda b: b[:2] + b"\x0d" + b[3:],
                  "IDX element type 0xd is not unsigned bytes"),
    "labels as images": ("train-images-idx3-ubyte",
                         lambda b: idx_bytes(np.zeros(12, np.uint8)),
                         "an IDX file of 1 dimensions; expected 3 (images)"),
    "count mismatch": ("t10k-labels-idx1-ubyte", lambda b: idx_bytes(np.zeros(4, np.uint8)),
                       "images and labels have different counts"),
}


@pytest.mark.parametrize("damage", sorted(IDX_DAMAGE))
def test_damaged_idx_files_are_refused(tmp_path, damage):
    name, change, message = IDX_DAMAGE[damage]
    write_mnist(tmp_path / "mnist", compress=False)
    _rewrite(tmp_path / "mnist" / name, change)
    with pytest.raises(InputError) as info:
        load_data(str(tmp_path / "mnist"), (1, 28, 28))
    assert message in str(info.value)


def test_damaged_gzip_and_missing_files_are_refused(tmp_path):
    write_mnist(tmp_path / "mnist", compress=True)
    _rewrite(tmp_path / "mnist" / "train-images-idx3-ubyte.gz", lambda b: b[:30])
    with pytest.raises(InputError, match="train-images-idx3-ubyte.gz: cannot read this file"):
        load_data(str(tmp_path / "mnist"), (1, 28, 28))
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(InputError, match="MNIST-style folder is missing t10k-labels-idx1-ubyte"):
        load_data(str(tmp_path / "mnist"), (1, 28, 28))


# -- CIFAR-10 python batches -----------------------------------------------------------------------

class Python2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (BINSTRING), as the CIFAR-10 download was written."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else \
            pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def cifar_pickle(obj, flavour: str) -> bytes:
    if flavour == "python2":
        f = io.BytesIO()
        Python2Pickler(f, protocol=2).dump(obj)
        return f.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    return pickle.dumps(obj, protocol=int(flavour[-1]))


def cifar_batch(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"training batch 1 of 5",
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"img_{i}.png".encode() for i in range(n)]}


def write_cifar(directory, flavour: str = "python2", train_batches: int = 2):
    directory.mkdir(parents=True, exist_ok=True)
    batches = {f"data_batch_{i + 1}": cifar_batch(6, i) for i in range(train_batches)}
    batches["test_batch"] = cifar_batch(4, 99)
    for name, batch in batches.items():
        (directory / name).write_bytes(cifar_pickle(batch, flavour))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
             b"ship", b"truck"]
    (directory / "batches.meta").write_bytes(cifar_pickle(
        {b"label_names": names, b"num_cases_per_batch": 10000, b"num_vis": 3072}, flavour))
    return batches


@pytest.mark.parametrize("flavour", ["python2", "protocol2", "protocol4", "protocol5"])
def test_cifar10_batches(tmp_path, flavour):
    batches = write_cifar(tmp_path / "cifar-10-batches-py", flavour)
    data = load_data(str(tmp_path), (3, 32, 32))  # the folder above works too
    assert data.x_train.shape == (12, 3, 32, 32) and data.x_test.shape == (4, 3, 32, 32)
    first = batches["data_batch_1"][b"data"].reshape(6, 3, 32, 32) / 255.0
    np.testing.assert_allclose(data.x_train[:6], first, rtol=1e-6)
    np.testing.assert_array_equal(data.y_train[6:], batches["data_batch_2"][b"labels"])
    np.testing.assert_array_equal(data.y_test, batches["test_batch"][b"labels"])
    assert data.classes[:3] == ["airplane", "automobile", "bird"]


def test_cifar10_for_a_grayscale_spec(tmp_path):
    write_cifar(tmp_path / "cifar")
    data = load_data(str(tmp_path / "cifar"), (1, 28, 28))
    assert data.x_train.shape == (12, 1, 28, 28)


class RunsCode:
    """Unpickling this calls ``os.system``: the data reader must refuse before it runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class EvalsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return eval, (f"open({self.marker!r}, 'w').close()",)


@pytest.mark.parametrize("payload", [RunsCode, EvalsCode])
@pytest.mark.parametrize("where", ["whole batch", "inside data", "inside labels"])
def test_malicious_pickle_is_refused_without_running(tmp_path, payload, where):
    write_cifar(tmp_path / "cifar")
    marker = tmp_path / "pwned"
    batch = cifar_batch(6, 0)
    if where == "whole batch":
        evil = payload(marker)
    elif where == "inside data":
        evil = {**batch, b"data": payload(marker)}
    else:
        evil = {**batch, b"labels": [payload(marker)] * 6}
    (tmp_path / "cifar" / "data_batch_2").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(InputError) as info:
        load_data(str(tmp_path / "cifar"), (3, 32, 32))
    assert "data_batch_2: not a CIFAR-10 python batch (refusing to load" in str(info.value)
    assert not marker.exists(), "the pickle ran code"


def test_malicious_label_names_are_ignored_without_running(tmp_path):
    write_cifar(tmp_path / "cifar")
    marker = tmp_path / "pwned"
    (tmp_path / "cifar" / "batches.meta").write_bytes(pickle.dumps(RunsCode(marker)))
    data = load_data(str(tmp_path / "cifar"), (3, 32, 32))
    assert data.classes == [str(i) for i in range(10)]
    assert not marker.exists()


CIFAR_DAMAGE = {
    "not a pickle": (lambda d: (d / "data_batch_1").write_bytes(b"\x00garbage" * 10),
                     "data_batch_1: not a CIFAR-10 python batch"),
    "truncated": (lambda d: (d / "data_batch_1").write_bytes(
        (d / "data_batch_1").read_bytes()[:500]), "data_batch_1: not a CIFAR-10 python batch"),
    "no data": (lambda d: (d / "test_batch").write_bytes(pickle.dumps({b"labels": [1]})),
                "test_batch: not a CIFAR-10 python batch (no 'data')"),
    "wrong image size": (lambda d: (d / "data_batch_1").write_bytes(pickle.dumps(
        {b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]})),
        "a CIFAR-10 batch's 'data' is uint8 (N, 3072); received uint8 (2, 1024)"),
    "labels missing": (lambda d: (d / "data_batch_1").write_bytes(pickle.dumps(
        {b"data": np.zeros((2, 3072), np.uint8)})), "needs one integer label per image"),
    "labels short": (lambda d: (d / "data_batch_1").write_bytes(pickle.dumps(
        {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]})),
        "needs one integer label per image"),
    "no test batch": (lambda d: (d / "test_batch").unlink(), "CIFAR-10 folder has no test_batch"),
}


@pytest.mark.parametrize("damage", sorted(CIFAR_DAMAGE))
def test_damaged_cifar_batches_are_refused(tmp_path, damage):
    change, message = CIFAR_DAMAGE[damage]
    write_cifar(tmp_path / "cifar")
    change(tmp_path / "cifar")
    with pytest.raises(InputError) as info:
        load_data(str(tmp_path / "cifar"), (3, 32, 32))
    assert message in str(info.value)


# -- image folders ---------------------------------------------------------------------------------

def write_images(directory, counts: dict, seed: int = 0, size=(10, 12)):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, count in counts.items():
        (directory / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(directory / name / f"{i}.png")
    (directory / next(iter(counts)) / "notes.txt").write_text("not an image")


@needs_pil
def test_image_folder_with_a_held_out_fraction(tmp_path):
    write_images(tmp_path / "pets", {"dog": 6, "cat": 6})
    data = load_data(str(tmp_path / "pets"), (3, 16, 16), test_fraction=0.25)
    assert data.classes == ["cat", "dog"]
    assert data.x_train.shape == (9, 3, 16, 16) and data.x_test.shape == (3, 3, 16, 16)
    assert data.x_train.dtype == np.float32 and 0 <= data.x_train.min() <= data.x_train.max() <= 1
    assert sorted(np.concatenate([data.y_train, data.y_test]).tolist()) == [0] * 6 + [1] * 6


@needs_pil
def test_image_folder_with_train_and_test_parts_in_grayscale(tmp_path):
    from PIL import Image

    write_images(tmp_path / "pets" / "train", {"cat": 3, "dog": 2})
    write_images(tmp_path / "pets" / "test", {"cat": 1, "dog": 2}, seed=1)
    data = load_data(str(tmp_path / "pets"), (1, 10, 12))
    assert data.x_train.shape == (5, 1, 10, 12) and data.x_test.shape == (3, 1, 10, 12)
    np.testing.assert_array_equal(data.y_test, [0, 1, 1])
    with Image.open(tmp_path / "pets" / "test" / "cat" / "0.png") as img:  # same size: as is
        want = np.asarray(img.convert("L"), np.float32) / 255
    np.testing.assert_allclose(data.x_test[0, 0], want)


@needs_pil
def test_image_folder_problems_are_refused(tmp_path):
    write_images(tmp_path / "pets", {"cat": 2, "dog": 2})
    (tmp_path / "pets" / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(InputError, match="broken.png: cannot read this image"):
        load_data(str(tmp_path / "pets"), (3, 8, 8))
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(InputError, match="no images found in class subfolders"):
        load_data(str(tmp_path / "empty"), (3, 8, 8))
    with pytest.raises(InputError, match="image folders feed 2-D nets with 1 or 3 input "
                                         "channels; this spec's input is \\[3, 20\\]"):
        load_data(str(tmp_path / "pets"), (3, 20))


def test_image_folder_without_pillow_says_so(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pil(name, *args, **kwargs):
        if name == "PIL" or name.startswith("PIL."):
            raise ImportError("no PIL here")
        return real_import(name, *args, **kwargs)

    (tmp_path / "pets" / "cat").mkdir(parents=True)
    monkeypatch.setattr(builtins, "__import__", no_pil)
    with pytest.raises(InputError, match="image folders need Pillow"):
        load_data(str(tmp_path / "pets"), (3, 8, 8))


# -- .npz ------------------------------------------------------------------------------------------

def test_npz_with_both_splits(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.random((10, 2, 5)), "y_train": rng.integers(0, 4, 10),
              "x_test": rng.random((3, 2, 5)), "y_test": np.array([0, 1, 3])}
    np.savez(tmp_path / "set.npz", **arrays)
    data = load_data(str(tmp_path / "set.npz"), (2, 5))  # any input rank: arrays as they are
    np.testing.assert_allclose(data.x_train, arrays["x_train"].astype(np.float32))
    assert data.x_train.dtype == np.float32
    np.testing.assert_array_equal(data.y_test, [0, 1, 3])
    assert data.classes == ["0", "1", "2", "3"] and data.name == "set"


def test_npz_of_x_and_y_is_split(tmp_path):
    np.savez(tmp_path / "all.npz", x=np.zeros((20, 1, 4, 4)), y=np.arange(20) % 2)
    data = load_data(str(tmp_path / "all.npz"), (1, 4, 4), test_fraction=0.25)
    assert len(data.x_train) == 15 and len(data.x_test) == 5


NPZ_PROBLEMS = {
    "wrong keys": ({"images": np.zeros((2, 1, 4, 4)), "labels": np.zeros(2)},
                   "needs arrays x_train, y_train (and x_test, y_test) or x, y; it has "
                   "['images', 'labels']"),
    "wrong sample shape": ({"x": np.zeros((8, 1, 5, 5)), "y": np.zeros(8, int)},
                           "training samples have shape (1, 5, 5); the spec's input is "
                           "(1, 4, 4)"),
    "wrong test shape": ({"x_train": np.zeros((4, 1, 4, 4)), "y_train": np.zeros(4, int),
                          "x_test": np.zeros((2, 4, 4)), "y_test": np.zeros(2, int)},
                         "test samples have shape (4, 4)"),
    "label count": ({"x_train": np.zeros((4, 1, 4, 4)), "y_train": np.zeros(3, int),
                     "x_test": np.zeros((2, 1, 4, 4)), "y_test": np.zeros(2, int)},
                    "4 training samples with 3 labels"),
    "pickled objects": ({"x": np.array([object(), 1], dtype=object), "y": np.zeros(2)},
                        "not a readable .npz file"),
}


@pytest.mark.parametrize("problem", sorted(NPZ_PROBLEMS))
def test_npz_problems_are_refused(tmp_path, problem):
    arrays, message = NPZ_PROBLEMS[problem]
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(InputError) as info:
        load_data(str(tmp_path / "bad.npz"), (1, 4, 4))
    assert message in str(info.value)


def test_a_file_that_is_not_an_npz_is_refused(tmp_path):
    (tmp_path / "fake.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(InputError, match="fake.npz: not a readable .npz file"):
        load_data(str(tmp_path / "fake.npz"), (1, 4, 4))
