"""Small datasets written in the exact formats the lab reads: MNIST IDX files and CIFAR python batches."""

import gzip
import pickle

import numpy as np

IDX_CODES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}  # the format's dtypes


def write_idx(path, array, compress=False, dtype=np.uint8):
    """The IDX format: 0, 0, a dtype code, the number of dims, each dim as a big-endian uint32, the data (big-endian)."""
    dtype = np.dtype(dtype).newbyteorder(">")
    array = np.asarray(array).astype(dtype)
    raw = bytes([0, 0, IDX_CODES[f"{dtype.kind}{dtype.itemsize}"], array.ndim])
    raw += np.asarray(array.shape, ">u4").tobytes() + array.tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def write_mnist(folder, n_train=20, n_test=5, side=6, compress=False, seed=0):
    """The four MNIST IDX files of random images and labels (0..9) in ``folder``; returns the arrays by file name."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, side, side)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, side, side)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    for name, a in arrays.items():
        write_idx(folder / (name + (".gz" if compress else "")), a, compress)
    return arrays


def write_cifar_batch(path, n, label_key=b"labels", seed=0, labels=None, pixels=None):
    """A CIFAR python batch: a dict with bytes keys, data (n, 3072) uint8 (R, G, B planes of 32x32), labels a list."""
    rng = np.random.default_rng(seed)
    d = {
        b"batch_label": b"testing batch",
        label_key: rng.integers(0, 100 if label_key == b"fine_labels" else 10, n).tolist() if labels is None else labels,
        b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8) if pixels is None else pixels,
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    if label_key == b"fine_labels":
        d[b"coarse_labels"] = [0] * n
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)
    return d


def write_cifar10(folder, per_batch=8, n_test=8, seed=0):
    """CIFAR-10 as its archive extracts: ``folder/cifar-10-batches-py/`` with data_batch_1..5 and test_batch; returns that folder."""
    sub = folder / "cifar-10-batches-py"
    sub.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        write_cifar_batch(sub / f"data_batch_{i}", per_batch, seed=seed + i)
    write_cifar_batch(sub / "test_batch", n_test, seed=seed + 6)
    return sub


def write_cifar100(folder, n_train=40, n_test=8, seed=0):
    """CIFAR-100 as its archive extracts: ``folder/cifar-100-python/`` with train and test (fine labels); returns that folder."""
    sub = folder / "cifar-100-python"
    sub.mkdir(parents=True, exist_ok=True)
    write_cifar_batch(sub / "train", n_train, label_key=b"fine_labels", seed=seed + 1)
    write_cifar_batch(sub / "test", n_test, label_key=b"fine_labels", seed=seed + 2)
    return sub
