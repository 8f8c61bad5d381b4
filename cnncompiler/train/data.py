"""Training data: numpy arrays, .npz files, MNIST/Fashion-MNIST IDX files, CIFAR-10 python
batches, image folders (one subfolder per class), and scikit-learn's bundled handwritten digits.

    data = load_data("digits", input_shape=(1, 32, 32))          # no download needed
    data = load_data("~/data/cifar-10-batches-py", (3, 32, 32))
    data.x_train, data.y_train, data.x_test, data.y_test

Images come out as float32 in [0, 1], shaped (N, C, H, W) and resized to the spec's input
(bilinear) when their size differs; grayscale and RGB are converted into each other. Nothing
is downloaded: datasets are read from the path the user gives. CIFAR's pickled batches are
read with an unpickler that can only rebuild numpy arrays, never run code.
"""

from __future__ import annotations

import gzip
import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list

    def describe(self) -> str:
        return (f"{self.name}: {len(self.x_train)} training and {len(self.x_test)} test samples "
                f"of {self.x_train.shape[1:]}, {len(self.classes)} classes")

    def validation_split(self, fraction: float, seed: int = 0) -> tuple:
        """``(x_train, y_train, x_val, y_val)``: a seeded random ``fraction`` of the training
        samples held out to choose epochs and settings by, so that the test set is looked at
        once, at the end. The same seed gives the same split (a resumed run keeps it)."""
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or \
                not 0.0 < fraction < 1.0:
            raise InputError(f"a validation fraction is in (0, 1); received {fraction!r}")
        held = int(round(len(self.x_train) * fraction))
        if held < 1 or held >= len(self.x_train):
            raise InputError(f"{self.name}: a validation fraction of {fraction} leaves {held} of "
                             f"{len(self.x_train)} training samples for validation; both parts "
                             "need at least one sample")
        # a stream of its own: the test split drawn from the same seed stays as it was
        return split(self.x_train, self.y_train, fraction, [seed, 1])


def split(x, y, test_fraction: float, seed):
    """A fixed, seeded train/test split (``seed``: an int or a sequence of ints)."""
    order = np.random.default_rng(seed).permutation(len(x))
    cut = len(x) - int(round(len(x) * test_fraction))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def resize_bilinear(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (N, C, H, W) with bilinear interpolation (align_corners=False)."""
    n, c, h, w = x.shape
    if (h, w) == (height, width):
        return x

    def coords(src, dst):
        pos = (np.arange(dst) + 0.5) * src / dst - 0.5
        pos = np.clip(pos, 0, src - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, src - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    y0, y1, fy = coords(h, height)
    x0, x1, fx = coords(w, width)
    top = x[:, :, y0][:, :, :, x0] * (1 - fx) + x[:, :, y0][:, :, :, x1] * fx
    bottom = x[:, :, y1][:, :, :, x0] * (1 - fx) + x[:, :, y1][:, :, :, x1] * fx
    return (top * (1 - fy)[:, None] + bottom * fy[:, None]).astype(np.float32)


def fit_images(x: np.ndarray, input_shape) -> np.ndarray:
    """(N, C, H, W) images to the spec's (C, H, W): channels converted, size resized."""
    if len(input_shape) != 3:
        raise InputError(f"image data needs a 2-D net with input [C, H, W]; this spec's input is "
                         f"{list(input_shape)}; give arrays in an .npz instead")
    c, h, w = input_shape
    if x.shape[1] != c:
        if x.shape[1] == 1 and c == 3:
            x = np.repeat(x, 3, axis=1)
        elif x.shape[1] == 3 and c == 1:
            x = (x * np.array([0.299, 0.587, 0.114], np.float32)[None, :, None, None]).sum(
                axis=1, keepdims=True)
        else:
            raise InputError(f"images have {x.shape[1]} channels; the spec wants {c}")
    return np.ascontiguousarray(resize_bilinear(x.astype(np.float32), h, w))


# -- sources -----------------------------------------------------------------------------------------

def load_digits_data(seed: int = 0) -> tuple:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise InputError("--data digits needs scikit-learn (pip install scikit-learn)") from None
    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    return x, d.target.astype(np.int64), [str(i) for i in range(10)]


def _read_idx(path: Path, ndim_wanted: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:  # a damaged .gz
        raise InputError(f"{path}: cannot read this file ({exc})") from None
    if len(data) < 4 or data[:2] != b"\x00\x00":
        raise InputError(f"{path}: not an IDX file (bad magic number)")
    kind, ndim = data[2], data[3]
    if kind != 0x08:
        raise InputError(f"{path}: IDX element type {kind:#x} is not unsigned bytes")
    if ndim != ndim_wanted:
        raise InputError(f"{path}: an IDX file of {ndim} dimensions; expected "
                         f"{ndim_wanted} ({'images' if ndim_wanted == 3 else 'labels'})")
    if len(data) < 4 + 4 * ndim:
        raise InputError(f"{path}: truncated IDX header")
    dims = np.frombuffer(data, ">u4", count=ndim, offset=4).astype(int)
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise InputError(f"{path}: truncated IDX file ({body.size} values for shape "
                         f"{tuple(int(d) for d in dims)})")
    return body.reshape(dims)


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    for name in (stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


STEMS = {"xtr": "train-images-idx3-ubyte", "ytr": "train-labels-idx1-ubyte",
         "xte": "t10k-images-idx3-ubyte", "yte": "t10k-labels-idx1-ubyte"}


def load_idx_dir(directory: Path) -> tuple | None:
    parts = {k: _find(directory, stem) for k, stem in STEMS.items()}
    if parts["xtr"] is None:
        return None
    missing = [STEMS[k] for k, v in parts.items() if v is None]
    if missing:
        raise InputError(f"{directory}: MNIST-style folder is missing "
                         f"{', '.join(missing)} (or the same with .gz)")
    xtr, ytr, xte, yte = (_read_idx(parts[k], 3 if k[0] == "x" else 1)
                          for k in ("xtr", "ytr", "xte", "yte"))
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise InputError(f"{directory}: images and labels have different counts")
    scale = np.float32(1 / 255)
    return (xtr[:, None] * scale, ytr.astype(np.int64), xte[:, None] * scale,
            yte.astype(np.int64), [str(i) for i in range(int(ytr.max()) + 1)])


def _latin1(text, encoding="latin1", errors="strict"):
    """How Python 3 writes bytes at pickle protocol 2: ``_codecs.encode(text, 'latin1')``."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing to decode a data file's text as '{encoding}'")
    return text.encode("latin1")


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and plain containers; refuses every other global.

    The arrays may have been written by Python 2 (the CIFAR-10 download) or by Python 3 at any
    protocol (2 spells bytes with ``_codecs.encode``, 5 rebuilds arrays with ``_frombuffer``).
    """

    ALLOWED = {(core, name) for core in ("numpy.core.multiarray", "numpy._core.multiarray")
               for name in ("_reconstruct", "scalar")} | \
        {("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
         ("numpy", "ndarray"), ("numpy", "dtype"), ("builtins", "list"), ("builtins", "dict")}

    def find_class(self, module, name):
        if (module, name) == ("_codecs", "encode"):
            return _latin1
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load '{module}.{name}' from a data file")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            KeyError, IndexError) as exc:
        raise InputError(f"{path}: not a CIFAR-10 python batch ({exc})") from None
    if not isinstance(batch, dict) or b"data" not in batch:
        raise InputError(f"{path}: not a CIFAR-10 python batch (no 'data')")
    data = batch[b"data"]
    labels = batch.get(b"labels", batch.get(b"fine_labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or \
            data.shape[1] != 3 * 32 * 32:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise InputError(f"{path}: a CIFAR-10 batch's 'data' is uint8 (N, 3072); received {got}")
    try:
        labels = np.asarray(labels, np.int64)
    except (TypeError, ValueError):
        labels = None
    if labels is None or labels.shape != (len(data),):
        raise InputError(f"{path}: a CIFAR-10 batch needs one integer label per image in "
                         "'labels' (or 'fine_labels')")
    return data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0, labels


def load_cifar_dir(directory: Path) -> tuple | None:
    if (directory / "cifar-10-batches-py").is_dir():
        directory = directory / "cifar-10-batches-py"
    train = sorted(directory.glob("data_batch_*"))
    if not train:
        return None
    if not (directory / "test_batch").is_file():
        raise InputError(f"{directory}: CIFAR-10 folder has no test_batch")
    parts = [_read_cifar_batch(p) for p in train]
    xte, yte = _read_cifar_batch(directory / "test_batch")
    names = [str(i) for i in range(10)]
    meta = directory / "batches.meta"
    if meta.is_file():
        try:
            info = _ArrayUnpickler(io.BytesIO(meta.read_bytes()), encoding="bytes").load()
            names = [n.decode() for n in info.get(b"label_names", [])] or names
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError):
            pass
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            xte, yte, names)


def _read_image_folder(directory: Path, classes: list[str] | None, input_shape):
    try:
        from PIL import Image
    except ImportError:
        raise InputError("image folders need Pillow (pip install pillow)") from None
    found = sorted(p.name for p in directory.iterdir() if p.is_dir())
    classes = classes or found
    mode = "L" if input_shape[0] == 1 else "RGB"
    xs, ys = [], []
    for label, name in enumerate(classes):
        for f in sorted((directory / name).glob("*")) if (directory / name).is_dir() else []:
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(f) as img:
                    img = img.convert(mode).resize((input_shape[2], input_shape[1]),
                                                   Image.BILINEAR)
                    arr = np.asarray(img, np.float32) / 255.0
            except OSError as exc:
                raise InputError(f"{f}: cannot read this image ({exc})") from None
            xs.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
            ys.append(label)
    if not xs:
        raise InputError(f"{directory}: no images found in class subfolders")
    return np.stack(xs), np.asarray(ys, np.int64), classes


def load_image_folder(directory: Path, input_shape, test_fraction: float, seed: int):
    if len(input_shape) != 3 or input_shape[0] not in (1, 3):
        raise InputError(f"{directory}: image folders feed 2-D nets with 1 or 3 input channels; "
                         f"this spec's input is {list(input_shape)}")
    subdirs = {p.name for p in directory.iterdir() if p.is_dir()}
    if "train" in subdirs and ({"test", "val"} & subdirs):
        xtr, ytr, classes = _read_image_folder(directory / "train", None, input_shape)
        other = directory / ("test" if "test" in subdirs else "val")
        xte, yte, _ = _read_image_folder(other, classes, input_shape)
        return xtr, ytr, xte, yte, classes
    x, y, classes = _read_image_folder(directory, None, input_shape)
    return (*split(x, y, test_fraction, seed), classes)


def load_npz(path: Path, test_fraction: float, seed: int):
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.files)
            if {"x_train", "y_train"} <= keys:
                xtr, ytr = data["x_train"], data["y_train"]
                if {"x_test", "y_test"} <= keys:
                    return xtr, ytr, data["x_test"], data["y_test"], None
                return (*split(xtr, ytr, test_fraction, seed), None)
            if {"x", "y"} <= keys:
                return (*split(data["x"], data["y"], test_fraction, seed), None)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: not a readable .npz file ({exc})") from None
    raise InputError(f"{path}: an .npz dataset needs arrays x_train, y_train (and x_test, "
                     f"y_test) or x, y; it has {sorted(keys)}")


def load_data(source: str, input_shape, test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """Read a dataset and shape it for a spec's input (``model.input_shape``). See the module
    docstring; ``test_fraction`` is the seeded held-out part of data that has no test split."""
    if source == "digits":
        x, y, classes = load_digits_data()
        x = fit_images(x, input_shape)
        return Dataset("digits", *split(x, y, test_fraction, seed), classes)
    path = Path(source).expanduser()
    if not path.exists():
        raise InputError(f"no dataset at '{source}': give 'digits', an .npz file, or a folder of "
                         "MNIST IDX files, CIFAR-10 python batches or class subfolders of images")
    if path.is_file():
        if path.suffix != ".npz":
            raise InputError(f"{path}: a dataset file must be .npz (or give a folder)")
        xtr, ytr, xte, yte, classes = load_npz(path, test_fraction, seed)
        try:
            xtr, xte = np.asarray(xtr, np.float32), np.asarray(xte, np.float32)
        except ValueError as exc:
            raise InputError(f"{path}: samples are not numbers ({exc})") from None
        if len(xtr) != len(ytr) or len(xte) != len(yte):
            raise InputError(f"{path}: {len(xtr)} training samples with {len(ytr)} labels, "
                             f"{len(xte)} test samples with {len(yte)} labels")
        for part, arr in (("training", xtr), ("test", xte)):
            if arr.shape[1:] != tuple(input_shape):
                raise InputError(f"{path}: {part} samples have shape {arr.shape[1:]}; the "
                                 f"spec's input is {tuple(input_shape)}")
        k = int(max(ytr.max(), yte.max())) + 1 if np.issubdtype(ytr.dtype, np.integer) else 0
        return Dataset(path.stem, xtr, ytr, xte, yte, classes or [str(i) for i in range(k)])
    for reader in (load_idx_dir, load_cifar_dir):
        found = reader(path)
        if found is not None:
            xtr, ytr, xte, yte, classes = found
            return Dataset(path.name, fit_images(xtr, input_shape), ytr,
                           fit_images(xte, input_shape), yte, classes)
    xtr, ytr, xte, yte, classes = load_image_folder(path, input_shape, test_fraction, seed)
    return Dataset(path.name, xtr, ytr, xte, yte, classes)
