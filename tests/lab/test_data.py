"""Datasets: MNIST-1D generated and cached, the shipped digits, MNIST IDX and CIFAR pickles read
from files written here in their exact formats, and the checks every format goes through."""

import importlib.util
import pathlib
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from dataset_files import write_cifar_batch, write_idx, write_mnist

from normlab.lab import data
from normlab.lab.data import DataError

REPO = pathlib.Path(__file__).resolve().parents[2]


def validation_rows(labels):
    """The documented validation split of a folder: the training samples ordered by class (file order
    within each class), every 10th of them; returned in file order."""
    by_class = [i for c in sorted(set(labels.tolist())) for i in range(len(labels)) if labels[i] == c]
    return sorted(by_class[9::10])


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
    labels, images = arrays["train-labels-idx1-ubyte"], arrays["train-images-idx3-ubyte"][:, None]
    val = validation_rows(labels)
    train = [i for i in range(20) if i not in val]
    assert len(val) == 2 and ds.x_val.shape == (2, 1, 6, 6)
    assert ds.x_train.shape == (18, 1, 6, 6) and ds.x_test.shape == (5, 1, 6, 6) and ds.sample_shape == (1, 6, 6)
    assert ds.y_train.tolist() == labels[train].tolist() and ds.y_val.tolist() == labels[val].tolist()
    assert ds.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    # standardized with the statistics of the training split alone, validation and test alike
    x = images[train]
    np.testing.assert_allclose(ds.x_train.numpy(), standardized(x, x), atol=1e-5)
    np.testing.assert_allclose(ds.x_val.numpy(), standardized(x, images[val]), atol=1e-5)
    np.testing.assert_allclose(
        ds.x_test.numpy(), standardized(x, arrays["t10k-images-idx3-ubyte"][:, None]), atol=1e-5
    )


def test_a_folders_validation_split_is_a_stratified_tenth_of_its_training_files(tmp_path):
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(10), [95, 40, 200, 11, 60, 100, 100, 100, 100, 194])
    rng.shuffle(labels)
    images = rng.integers(0, 256, (len(labels), 4, 4))
    write_idx(tmp_path / "train-images-idx3-ubyte", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images[:7])
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels[:7])
    ds = data.load(str(tmp_path))
    assert len(ds.y_val) == len(labels) // 10 and len(ds.y_train) + len(ds.y_val) == len(labels)
    counts, val_counts = np.bincount(labels), np.bincount(ds.y_val.numpy(), minlength=10)
    assert (np.abs(val_counts - counts / 10) < 1).all()  # each class a tenth of its samples, to one sample
    assert ds.y_val.tolist() == labels[validation_rows(labels)].tolist()
    again = data.load(str(tmp_path))  # the same split at every load
    assert torch.equal(again.x_val, ds.x_val) and torch.equal(again.y_train, ds.y_train)


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
    labels = np.array(sum((b[b"labels"] for b in train), []))
    val = validation_rows(labels)
    rows = [i for i in range(15) if i not in val]
    assert ds.x_train.shape == (14, 3, 32, 32) and ds.x_val.shape == (1, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    assert ds.classes <= 10 and ds.y_train.tolist() == labels[rows].tolist()
    x, y = data.read_cifar(folder / "test_batch")
    assert y.tolist() == test[b"labels"]
    # a row holds the red plane, then green, then blue, each 32x32 row-major
    assert x[1, 1, 2, 3] == test[b"data"][1, 1024 + 2 * 32 + 3] and x[2, 2, 31, 0] == test[b"data"][2, 2048 + 31 * 32]
    raw = np.concatenate([b[b"data"] for b in train]).reshape(-1, 3, 32, 32)
    np.testing.assert_allclose(ds.x_train.numpy(), standardized(raw[rows], raw[rows]), atol=1e-5)
    np.testing.assert_allclose(ds.x_val.numpy(), standardized(raw[rows], raw[val]), atol=1e-5)


def test_cifar100_uses_fine_labels(tmp_path):
    train = write_cifar_batch(tmp_path / "train", 10, b"fine_labels", seed=1)
    write_cifar_batch(tmp_path / "test", 2, b"fine_labels", seed=2)
    ds = data.load(str(tmp_path))
    labels = np.array(train[b"fine_labels"])
    assert ds.y_train.tolist() == np.delete(labels, validation_rows(labels)).tolist() and ds.x_train.shape == (9, 3, 32, 32)
    assert ds.classes == labels.max() + 1 > 10


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


# --- checks at load time: each case a file in its exact format, wrong in one way -----------------

def _mnist_with(tmp_path, **replace):
    """A valid MNIST folder with some files replaced: {file stem: (array, IDX dtype)}."""
    write_mnist(tmp_path)
    for stem, (array, dtype) in replace.items():
        write_idx(tmp_path / stem, array, dtype=dtype)
    return tmp_path


IDX_CASES = {
    "no training samples": (
        {"train-images-idx3-ubyte": (np.zeros((0, 6, 6)), np.uint8), "train-labels-idx1-ubyte": (np.zeros(0), np.uint8)},
        r"train-images-idx3-ubyte holds no samples",
    ),
    "no test samples": (
        {"t10k-images-idx3-ubyte": (np.zeros((0, 6, 6)), np.uint8), "t10k-labels-idx1-ubyte": (np.zeros(0), np.uint8)},
        r"t10k-images-idx3-ubyte holds no samples",
    ),
    "train and test images of different sizes": (
        {"t10k-images-idx3-ubyte": (np.zeros((5, 7, 7)), np.uint8)},
        r"t10k-images-idx3-ubyte holds samples of shape \(1, 7, 7\), but .*train-images-idx3-ubyte holds samples of shape \(1, 6, 6\)",
    ),
    "images with no pixels": (
        {"train-images-idx3-ubyte": (np.zeros((20, 0, 6)), np.uint8), "t10k-images-idx3-ubyte": (np.zeros((5, 0, 6)), np.uint8)},
        r"train-images-idx3-ubyte: samples of shape \(1, 0, 6\) hold no values",
    ),
    "negative labels": (
        {"train-labels-idx1-ubyte": (np.r_[np.arange(10), -1, np.arange(9)], np.int8)},
        r"train-labels-idx1-ubyte: labels must lie in 0..9 \(10 classes\), got 1 outside, e.g. -1",
    ),
    "labels beyond the classes": (
        {"t10k-labels-idx1-ubyte": (np.array([0, 1, 2, 3, 10**6]), ">i4")},
        r"t10k-labels-idx1-ubyte: labels must lie in 0..9 .*e.g. 1000000",
    ),
    "two-dimensional labels": (
        {"train-labels-idx1-ubyte": (np.zeros((20, 2)), np.uint8)},
        r"train-labels-idx1-ubyte: an MNIST label file has 1 dimension \(a label per image\), this one has 2",
    ),
    "labels that are not integers": (
        {"train-labels-idx1-ubyte": (np.linspace(0, 9, 20), ">f4")},
        r"train-labels-idx1-ubyte: labels must be integers, got >f4",
    ),
    "NaN pixels": (
        {"train-images-idx3-ubyte": (np.where(np.eye(6)[None] > 0, np.nan, 1.0) * np.ones((20, 1, 1)), ">f4")},
        r"train-images-idx3-ubyte: 120 values are NaN or infinite",
    ),
    "pixels too large to standardize": (
        {"train-images-idx3-ubyte": (np.full((20, 6, 6), 3e38), ">f4"), "t10k-images-idx3-ubyte": (np.ones((5, 6, 6)), ">f4")},
        r"train-images-idx3-ubyte: values too large to standardize",
    ),
    "test pixels too far from the training pixels": (
        {"train-images-idx3-ubyte": (np.ones((20, 6, 6)), ">f4"), "t10k-images-idx3-ubyte": (np.full((5, 6, 6), 3e38), ">f4")},
        r"t10k-images-idx3-ubyte: values too far from the training split's to standardize",
    ),
    "a zero-dimensional image file": (
        {"train-images-idx3-ubyte": (np.array(7), np.uint8)},
        r"train-images-idx3-ubyte: an MNIST image file has 3 dimensions \(images, rows, columns\), this one has 0",
    ),
    "a zero-dimensional label file": (
        {"train-labels-idx1-ubyte": (np.array(7), np.uint8)},
        r"train-labels-idx1-ubyte: an MNIST label file has 1 dimension \(a label per image\), this one has 0",
    ),
    "a one-class training set": (
        {"train-labels-idx1-ubyte": (np.full(20, 3), np.uint8)},
        r"train-labels-idx1-ubyte: every training label is 3; a classifier needs at least two classes",
    ),
    "too few training samples for a validation split": (
        {"train-images-idx3-ubyte": (np.zeros((9, 6, 6)), np.uint8), "train-labels-idx1-ubyte": (np.arange(9), np.uint8)},
        r"train-images-idx3-ubyte: 9 training samples are too few to set aside a validation split",
    ),
}


@pytest.mark.parametrize("case", sorted(IDX_CASES))
def test_bad_mnist_files_are_a_data_error_naming_the_file(tmp_path, case):
    files, message = IDX_CASES[case]
    with pytest.raises(DataError, match=message):
        data.load(str(_mnist_with(tmp_path, **files)))


def _cifar10_with(tmp_path, **test_batch):
    for i in range(1, 6):
        write_cifar_batch(tmp_path / f"data_batch_{i}", 4, seed=i)
    write_cifar_batch(tmp_path / "test_batch", 3, **test_batch)
    return tmp_path


CIFAR_CASES = {
    "labels of a million": ({"labels": [1, 10**6, 2]}, r"test_batch: labels must lie in 0..9 \(10 classes\), got 1 outside, e.g. 1000000"),
    "negative labels": ({"labels": [0, -3, 2]}, r"test_batch: labels must lie in 0..9 .*e.g. -3"),
    "labels that are not integers": ({"labels": [0, 1.5, 2]}, r"test_batch: labels must be integers, got float64"),
    "two-dimensional labels": ({"labels": [[0], [1], [2]]}, r"test_batch: labels must be one number per sample \(1-D\), got an array of shape \(3, 1\)"),
    "fewer labels than images": ({"labels": [0, 1]}, r"test_batch and .*test_batch disagree: 3 samples but 2 labels"),
    "no images": ({"labels": [], "pixels": np.zeros((0, 3072), np.uint8)}, r"test_batch holds no samples"),
    "images in another layout": (
        {"pixels": np.zeros((3, 32, 32, 3), np.uint8)},
        r"test_batch: CIFAR data must be rows of 3072 bytes \(3 planes of 32x32\), got an array of shape \(3, 32, 32, 3\)",
    ),
    "images of another size": ({"pixels": np.zeros((3, 3 * 28 * 28), np.uint8)}, r"test_batch: CIFAR data must be rows of 3072 bytes"),
    "NaN pixels": ({"pixels": np.full((3, 3072), np.nan)}, r"test_batch: CIFAR pixels must be bytes \(integers 0..255\), got float64 values"),
    "pixels beyond a byte": ({"pixels": np.full((3, 3072), 300)}, r"test_batch: CIFAR pixels must be bytes \(integers 0..255\), got int64 values"),
}


@pytest.mark.parametrize("case", sorted(CIFAR_CASES))
def test_bad_cifar_batches_are_a_data_error_naming_the_file(tmp_path, case):
    batch, message = CIFAR_CASES[case]
    with pytest.raises(DataError, match=message):
        data.load(str(_cifar10_with(tmp_path, **batch)))


def test_cifar100_labels_beyond_100_classes(tmp_path):
    write_cifar_batch(tmp_path / "train", 12, b"fine_labels", labels=list(range(11)) + [100])
    write_cifar_batch(tmp_path / "test", 2, b"fine_labels")
    with pytest.raises(DataError, match=r"train: labels must lie in 0..99 \(100 classes\), got 1 outside, e.g. 100"):
        data.load(str(tmp_path))


def test_a_damaged_shipped_digits_file_says_reinstall(tmp_path, monkeypatch):
    fake = tmp_path / "normlab_lab"
    (fake / "datasets").mkdir(parents=True)
    (fake / "datasets" / "digits.npz").write_bytes(b"not a zip")
    monkeypatch.setattr(data.resources, "files", lambda package: fake)
    with pytest.raises(DataError, match=r"digits.npz, normlab's copy of the digits, is missing or damaged .*reinstall normlab"):
        data.load("digits")


def test_mnist1d(mnist1d):
    ds = mnist1d
    assert ds.x_train.shape == (4000, 1, 40) and ds.x_test.shape == (1000, 1, 40) and ds.classes == 10
    assert sorted(set(ds.y_train.tolist())) == list(range(10))
    # standardized with the training split's statistics only
    assert abs(ds.x_train.double().mean().item()) < 1e-6 and abs(ds.x_train.double().std(unbiased=False).item() - 1) < 1e-5
    assert abs(ds.x_test.double().mean().item()) > 1e-4


def test_mnist1d_validation_split_is_new_draws_of_the_same_generator(mnist1d):
    """1000 further signals (seed 43), 100 per class, none of them a training or test signal;
    the training and test splits are the generator's own (seed 42) as before."""
    ds = mnist1d
    assert ds.x_val.shape == (1000, 1, 40) and np.bincount(ds.y_val.numpy()).tolist() == [100] * 10
    (x, y, x_test, y_test), _ = data._mnist1d()
    assert np.array_equal(ds.y_train.numpy(), y) and np.array_equal(ds.y_test.numpy(), y_test)
    seen = {row.tobytes() for row in torch.cat([ds.x_train, ds.x_test]).numpy()}
    assert not any(row.tobytes() in seen for row in ds.x_val.numpy())
    # the same distribution: standardized with the training statistics, its scale is the training split's
    assert abs(float(ds.x_val.mean())) < 0.05 and abs(float(ds.x_val.std()) - 1) < 0.05


def test_digits_are_shipped_split_and_need_no_scikit_learn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # importing scikit-learn fails
    ds = data.load("digits")
    assert (ds.x_train.shape, ds.x_val.shape, ds.x_test.shape) == ((1259, 1, 8, 8), (179, 1, 8, 8), (359, 1, 8, 8))
    assert ds.classes == 10 and ds.sample_shape == (1, 8, 8)
    counts = {split: np.bincount(getattr(ds, f"y_{split}").numpy(), minlength=10) for split in ("train", "val", "test")}
    total = sum(counts.values())
    for split, share in (("train", 0.7), ("val", 0.1), ("test", 0.2)):  # stratified: each class in proportion
        assert (np.abs(counts[split] - share * total) <= 1).all(), split
    assert len(set(ds.y_train[:100].tolist())) == 10  # the first training images mix the classes
    with np.load(pathlib.Path(data.__file__).parent / "datasets" / "digits.npz") as f:
        rows = np.concatenate([f["index_train"], f["index_val"], f["index_test"]])
        raw = f["x_train"][:, None].astype(np.float64)
    assert sorted(rows.tolist()) == list(range(1797))  # every image once, in one split
    np.testing.assert_allclose(ds.x_train.numpy(), standardized(raw, raw), atol=1e-5)


def test_shipped_digits_are_scikit_learns_split_as_documented():
    """The file holds scikit-learn's images and labels, split exactly as scripts/make_digits.py describes."""
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    digits = sklearn_datasets.load_digits()
    spec = importlib.util.spec_from_file_location("make_digits", REPO / "scripts" / "make_digits.py")
    make_digits = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_digits)
    expected = make_digits.split(digits.images.astype(np.uint8), digits.target.astype(np.uint8))
    with np.load(pathlib.Path(data.__file__).parent / "datasets" / "digits.npz") as f:
        assert sorted(f.files) == sorted(expected)
        for key in f.files:
            assert np.array_equal(f[key], expected[key]), key
        for split in ("train", "val", "test"):
            np.testing.assert_array_equal(f[f"x_{split}"], digits.images[f[f"index_{split}"]])
            np.testing.assert_array_equal(f[f"y_{split}"], digits.target[f[f"index_{split}"]])


@pytest.mark.slow
def test_the_wheel_ships_the_digits(tmp_path):
    """Built offline from a copy of the sources, the wheel holds digits.npz and its README."""
    src = tmp_path / "src"
    for name in ("pyproject.toml", "README.md"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes((REPO / name).read_bytes())
    subprocess.run(["cp", "-r", str(REPO / "src"), str(src / "src")], check=True)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("normlab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "normlab/lab/datasets/digits.npz" in names and "normlab/lab/datasets/README.md" in names


@pytest.mark.slow
def test_mnist1d_is_generated_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("NORMLAB_CACHE", str(tmp_path))
    state = np.random.get_state()
    first = data.load("mnist1d")
    after = np.random.get_state()
    assert np.array_equal(state[1], after[1]) and state[2] == after[2]  # numpy's global generator untouched
    cached, validation = sorted(tmp_path.glob("mnist1d-*.npz"), key=lambda p: -p.stat().st_size)  # 5000 signals, 1000
    import mnist1d.data

    monkeypatch.setattr(mnist1d.data, "make_dataset", None)  # a second load must not generate
    second = data.load("mnist1d")
    assert all((a == b).all() for a, b in zip((first.x_train, first.y_test), (second.x_train, second.y_test)))
    cached.write_bytes(b"damaged")  # a damaged cache is regenerated
    monkeypatch.undo()
    monkeypatch.setenv("NORMLAB_CACHE", str(tmp_path))
    third = data.load("mnist1d")
    assert (third.x_test == first.x_test).all()


def test_embedded_puts_each_sequence_intact_at_its_offset_and_noise_elsewhere():
    import torch

    x = torch.arange(1.0, 2 * 3 * 4 + 1).view(2, 3, 4)  # 2 sequences of 4 steps of 3 values, no zeros
    longer, offsets = data.embedded(x, 10, seed=5, noise=0.0)
    assert longer.shape == (2, 3, 10) and ((0 <= offsets) & (offsets <= 6)).all()
    for i, o in enumerate(offsets.tolist()):
        assert torch.equal(longer[i, :, o : o + 4], x[i])
        outside = torch.cat([longer[i, :, :o], longer[i, :, o + 4 :]], 1)
        assert torch.equal(outside, torch.zeros(3, 6))  # noise 0: nothing but the pattern
    noisy, same_offsets = data.embedded(x, 10, seed=5)
    assert torch.equal(same_offsets, offsets)  # the seed fixes the offsets, whatever the noise's size
    for i, o in enumerate(offsets.tolist()):
        assert torch.equal(noisy[i, :, o : o + 4], x[i])
    again, _ = data.embedded(x, 10, seed=5)
    assert torch.equal(again, noisy)
    # the noise: standard normal by default, scaled by `noise`
    big, at = data.embedded(torch.zeros(2000, 1, 4), 44, seed=1, noise=2.0)
    mask = torch.ones_like(big, dtype=torch.bool)
    mask.scatter_(2, (at[:, None] + torch.arange(4))[:, None, :], False)
    assert abs(float(big[mask].std()) - 2.0) < 0.02 and abs(float(big[mask].mean())) < 0.02
    assert set(at.tolist()) == set(range(41))  # every offset 0 .. 40 occurs
    # at the sequences' own length, the sequences themselves
    assert torch.equal(data.embedded(x, 4, seed=3)[0], x)
    with pytest.raises(ValueError, match="length must be an int of at least the sequences' 4 steps"):
        data.embedded(x, 3)
    with pytest.raises(ValueError, match=r"expected sequences of shape \(N, C, L\)"):
        data.embedded(x[0], 8)
