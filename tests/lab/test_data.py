"""Datasets: MNIST-1D generated and cached; MNIST IDX and CIFAR pickles read from files written here in their exact formats."""

import gzip
import pickle

import numpy as np
import pytest

from normlab.lab import data
from normlab.lab.data import DataError

def write_idx(path, array, compress=False):
    """The IDX format: 0, 0, a dtype code, the number of dims, each dim as a big-endian uint32, the data."""
    array = np.asarray(array, np.uint8)
    raw = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes() + array.tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def write_mnist(folder, n_train=12, n_test=5, side=6, compress=False, seed=0):
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


def write_cifar_batch(path, n, label_key=b"labels", seed=0):
    """A CIFAR python batch: a dict with bytes keys, data (n, 3072) uint8 (R, G, B planes of 32x32), labels a list."""
    rng = np.random.default_rng(seed)
    d = {
        b"batch_label": b"testing batch",
        label_key: rng.integers(0, 100 if label_key == b"fine_labels" else 10, n).tolist(),
        b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }
    if label_key == b"fine_labels":
        d[b"coarse_labels"] = [0] * n
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)
    return d


def standardized(x_train, x):
    """Reference: per-channel standardization with the training split's statistics, in float64."""
    x_train = np.asarray(x_train, np.float64)
    axes = (0, *range(2, x_train.ndim))
    mean, std = x_train.mean(axes, keepdims=True), x_train.std(axes, keepdims=True)
    return (np.asarray(x, np.float64) - mean) / std


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx_files(tmp_path, compress):
    arrays = write_mnist(tmp_path, compress=compress)
    ds = data.load(str(tmp_path))
    assert ds.x_train.shape == (12, 1, 6, 6) and ds.x_test.shape == (5, 1, 6, 6) and ds.sample_shape == (1, 6, 6)
    assert ds.y_train.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert ds.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    x = arrays["train-images-idx3-ubyte"][:, None]
    np.testing.assert_allclose(ds.x_train.numpy(), standardized(x, x), atol=1e-5)
    np.testing.assert_allclose(
        ds.x_test.numpy(), standardized(x, arrays["t10k-images-idx3-ubyte"][:, None]), atol=1e-5
    )


def test_idx_header_is_read_big_endian(tmp_path):
    a = np.zeros((2, 3, 300), np.uint8)
    write_idx(tmp_path / "x", a)
    assert data.read_idx(tmp_path / "x").shape == (2, 3, 300)  # 300 > 255: needs all four bytes of the dim


def test_corrupt_and_missing_idx_files_are_named(tmp_path):
    write_mnist(tmp_path)
    bad = tmp_path / "t10k-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:-7])  # truncated
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte is corrupt"):
        data.load(str(tmp_path))
    bad.write_bytes(b"\x12\x34\x08\x03" + bytes(20))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte is not an IDX file"):
        data.load(str(tmp_path))
    bad.unlink()
    with pytest.raises(DataError, match="not t10k-images-idx3-ubyte"):
        data.load(str(tmp_path))
    (tmp_path / "bad.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="bad.gz"):
        data.read_idx(tmp_path / "bad.gz")


def test_cifar10_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    train = [write_cifar_batch(folder / f"data_batch_{i}", 3, seed=i) for i in range(1, 6)]
    test = write_cifar_batch(folder / "test_batch", 4, seed=9)
    ds = data.load(str(tmp_path))  # the parent folder works too
    assert ds.x_train.shape == (15, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32) and ds.classes <= 10
    assert ds.y_train.tolist() == sum((b[b"labels"] for b in train), [])
    x, y = data.read_cifar(folder / "test_batch")
    assert y.tolist() == test[b"labels"]
    # a row holds the red plane, then green, then blue, each 32x32 row-major
    assert x[1, 1, 2, 3] == test[b"data"][1, 1024 + 2 * 32 + 3] and x[2, 2, 31, 0] == test[b"data"][2, 2048 + 31 * 32]
    raw = np.concatenate([b[b"data"] for b in train]).reshape(-1, 3, 32, 32)
    np.testing.assert_allclose(ds.x_train.numpy(), standardized(raw, raw), atol=1e-5)


def test_cifar100_uses_fine_labels(tmp_path):
    train = write_cifar_batch(tmp_path / "train", 6, b"fine_labels", seed=1)
    write_cifar_batch(tmp_path / "test", 2, b"fine_labels", seed=2)
    ds = data.load(str(tmp_path))
    assert ds.y_train.tolist() == train[b"fine_labels"] and ds.x_train.shape == (6, 3, 32, 32)


def test_cifar_errors_name_the_file(tmp_path):
    for i in range(1, 5):
        write_cifar_batch(tmp_path / f"data_batch_{i}", 2)
    write_cifar_batch(tmp_path / "test_batch", 2)
    with pytest.raises(DataError, match="missing CIFAR batch .*data_batch_5"):
        data.load(str(tmp_path))
    (tmp_path / "data_batch_5").write_bytes(b"garbage")
    with pytest.raises(DataError, match="data_batch_5 is not a CIFAR python batch"):
        data.load(str(tmp_path))


def test_cifar_pickle_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f, protocol=2)
    with pytest.raises(DataError, match="refusing to load .*print"):
        data.read_cifar(tmp_path / "batch")


def test_unknown_folders(tmp_path):
    with pytest.raises(DataError, match="no such dataset folder"):
        data.load(str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="holds no dataset normlab reads"):
        data.load(str(tmp_path))


def test_mnist1d(mnist1d):
    ds = mnist1d
    assert ds.x_train.shape == (4000, 1, 40) and ds.x_test.shape == (1000, 1, 40) and ds.classes == 10
    assert sorted(set(ds.y_train.tolist())) == list(range(10))
    # standardized with the training split's statistics only
    assert abs(ds.x_train.double().mean().item()) < 1e-6 and abs(ds.x_train.double().std(unbiased=False).item() - 1) < 1e-5
    assert abs(ds.x_test.double().mean().item()) > 1e-4


@pytest.mark.slow
def test_mnist1d_is_generated_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMLAB_CACHE", str(tmp_path))
    state = np.random.get_state()
    first = data.load("mnist1d")
    after = np.random.get_state()
    assert np.array_equal(state[1], after[1]) and state[2] == after[2]  # numpy's global generator untouched
    (cached,) = tmp_path.glob("mnist1d-*.npz")
    import mnist1d.data

    monkeypatch.setattr(mnist1d.data, "make_dataset", None)  # a second load must not generate
    second = data.load("mnist1d")
    assert all((a == b).all() for a, b in zip((first.x_train, first.y_test), (second.x_train, second.y_test)))
    cached.write_bytes(b"damaged")  # a damaged cache is regenerated
    monkeypatch.undo()
    monkeypatch.setenv("NORMLAB_CACHE", str(tmp_path))
    third = data.load("mnist1d")
    assert (third.x_test == first.x_test).all()


def test_mnist1d_test_split_at_other_lengths(mnist1d):
    """The same test signals, resampled: exactly the test split at 40 points, the same labels at any length."""
    import torch

    x, y = data.mnist1d_test_at(40)
    assert torch.equal(x, mnist1d.x_test) and torch.equal(y, mnist1d.y_test)
    longer, labels = data.mnist1d_test_at(60)
    assert longer.shape == (1000, 1, 60) and torch.equal(labels, mnist1d.y_test)
    # resampling keeps each signal: its values at the shared end points agree (up to the generator standardizing
    # each length by its own mean and spread, a 0.2% difference), and the scale is the same
    np.testing.assert_allclose(longer[:, 0, 0], x[:, 0, 0], rtol=0.01, atol=0.01)
    np.testing.assert_allclose(longer[:, 0, -1], x[:, 0, -1], rtol=0.01, atol=0.01)
    assert abs(float(longer.std()) - float(x.std())) < 0.05
    with pytest.raises(ValueError, match="length must be an int of at least 2"):
        data.mnist1d_test_at(1)
