"""Write src/normlab/lab/datasets/digits.npz from scikit-learn's copy of the handwritten digits.

Run once at development time (it needs scikit-learn; normlab does not):

    python scripts/make_digits.py

The split is fixed here and stored in the file, so loading it needs no random numbers:
per class, a permutation drawn from ``numpy.random.default_rng(0)`` puts the first
``round(0.2 n)`` of the class's ``n`` images in the test split, the next ``round(0.1 n)``
in the validation split and the rest in the training split; each split is then put in
an order drawn from the same generator (classes mixed, so that the first k training
images are a fair sample). See src/normlab/lab/datasets/README.md.
"""

import pathlib

import numpy as np

TEST, VALIDATION, SEED = 0.2, 0.1, 0

OUT = pathlib.Path(__file__).resolve().parent.parent / "src" / "normlab" / "lab" / "datasets" / "digits.npz"


def split(images: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays of digits.npz: each split's images, labels and rows of ``load_digits()``."""
    rng = np.random.default_rng(SEED)
    parts = {"train": [], "val": [], "test": []}
    for c in range(10):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test, n_val = round(TEST * len(members)), round(VALIDATION * len(members))
        parts["test"].append(members[:n_test])
        parts["val"].append(members[n_test : n_test + n_val])
        parts["train"].append(members[n_test + n_val :])
    arrays = {}
    for name, chunks in parts.items():
        order = rng.permutation(np.concatenate(chunks))
        arrays[f"x_{name}"], arrays[f"y_{name}"] = images[order], labels[order]
        arrays[f"index_{name}"] = order.astype(np.uint16)
    return arrays


def main() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.uint8)  # (1797, 8, 8), integers 0..16
    assert np.array_equal(images, digits.images), "the digits are integers 0..16"
    arrays = split(images, digits.target.astype(np.uint8))
    np.savez_compressed(OUT, **arrays)
    print(OUT, {k: v.shape for k, v in arrays.items()}, f"{OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
