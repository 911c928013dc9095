"""The source experiments as written (``--profile sources``): their data, preprocessing and
augmentation against what the sources' code does, their verdicts on constructed figures, each
run on small CIFAR files written here with the tiny budget, and skipped when its data is not given."""

import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from dataset_files import write_cifar10, write_cifar100, write_cifar_batch

from normlab.lab import augment, data, measures, stats
from normlab.lab import reproduce as rep
from normlab.lab.claims import CLAIMS, PROFILES, SOURCES, Profile, Run, for_profile
from normlab.lab.claims.sources import keras_cnn_cifar100, keras_dense_synthetic, vgg_noise_cifar10
from normlab.lab.models import ModelSpec, build
from normlab.lab.train import PROBES, RunConfig, train


def cli(*args):
    return subprocess.run([sys.executable, "-m", "normlab", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """A folder holding small CIFAR-10 and CIFAR-100 sets as their archives extract."""
    folder = tmp_path_factory.mktemp("cifar")
    write_cifar10(folder)
    write_cifar100(folder)
    return folder


# --- data: the tutorial's random labels, the blog post's centering, finding CIFAR ------------------


def test_random_binary_is_the_tutorials_synthetic_data():
    ds = data.load("random-binary", "none")
    assert ds.sample_shape == (20,) and ds.classes == 2
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (1000, 1000, 1000)
    for x in (ds.x_train, ds.x_val, ds.x_test):
        assert x.dtype == torch.float32 and 0 <= x.min() and x.max() < 1  # np.random.rand: uniform in [0, 1)
    assert set(ds.y_train.tolist()) == {0, 1} and 400 < int(ds.y_train.sum()) < 600
    assert torch.equal(data.load("random-binary", "none").x_train, ds.x_train)  # the same at every load
    assert not torch.equal(ds.x_train, ds.x_test)
    standardized = data.load("random-binary")  # the default still standardizes on the training split
    assert abs(float(standardized.x_train.mean())) < 1e-5 and abs(float(standardized.x_train.std()) - 1) < 1e-3


def test_center_subtracts_each_splits_own_mean_and_none_keeps_the_values(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (30, 3072)).astype(np.uint8)
    for i in range(1, 6):
        write_cifar_batch(tmp_path / f"data_batch_{i}", 10, seed=i)
    write_cifar_batch(tmp_path / "test_batch", 30, pixels=pixels)
    raw = pixels.reshape(-1, 3, 32, 32).astype(np.float64)
    centered = data.load(str(tmp_path), "center")
    # the blog post's x_test - x_test.mean(): one number, over every pixel and channel of the split, no scaling
    np.testing.assert_allclose(centered.x_test.numpy(), raw - raw.mean(), atol=1e-4)
    for x in (centered.x_train, centered.x_val, centered.x_test):
        assert abs(float(x.double().mean())) < 1e-3
    kept = data.load(str(tmp_path), "none")
    np.testing.assert_array_equal(kept.x_test.numpy(), raw)
    with pytest.raises(ValueError, match="preprocess must be one of"):
        data.load(str(tmp_path), "whiten")


def test_find_cifar_in_a_folder_its_archives_extract_to(cifar, tmp_path):
    assert data.find(str(cifar), "cifar-10") == str(cifar / "cifar-10-batches-py")
    assert data.find(str(cifar), "cifar-100") == str(cifar / "cifar-100-python")
    assert data.find(str(cifar / "cifar-100-python"), "cifar-100") == str(cifar / "cifar-100-python")
    with pytest.raises(data.NotGiven, match=r"needs CIFAR-10 .*cifar-10-batches-py/.*; the data given is 'mnist1d'"):
        data.find("mnist1d", "cifar-10")
    with pytest.raises(data.NotGiven, match="needs CIFAR-10 .* holds none"):
        data.find(str(cifar / "cifar-100-python"), "cifar-10")
    with pytest.raises(data.DataError, match="no such dataset folder") as raised:
        data.find(str(tmp_path / "nowhere"), "cifar-100")
    assert not isinstance(raised.value, data.NotGiven)  # a mistyped folder is an error, not a skip


# --- augmentation: Keras's ImageDataGenerator -----------------------------------------------------


def keras_affine(image, shear_degrees, zx, zy):
    """What Keras's apply_affine_transform does to one (C, H, W) image: its matrices, its center, scipy."""
    from scipy import ndimage

    s = np.deg2rad(shear_degrees)
    matrix = np.array([[1, -np.sin(s), 0], [0, np.cos(s), 0], [0, 0, 1]]) @ np.diag([zx, zy, 1.0])
    h, w = image.shape[1:]
    o_x, o_y = h / 2 + 0.5, w / 2 + 0.5  # transform_matrix_offset_center
    offset, reset = np.array([[1, 0, o_x], [0, 1, o_y], [0, 0, 1]]), np.array([[1, 0, -o_x], [0, 1, -o_y], [0, 0, 1]])
    t = offset @ matrix @ reset
    return np.stack([ndimage.affine_transform(c, t[:2, :2], t[:2, 2], order=1, mode="nearest") for c in image]), matrix[:2, :2]


def test_affine_resamples_as_keras_does():
    rng = np.random.default_rng(1)
    images = rng.random((4, 3, 9, 7)).astype(np.float32)
    expected, matrices = zip(*(keras_affine(im, rng.uniform(-30, 30), *rng.uniform(0.6, 1.4, 2)) for im in images))
    flip = torch.tensor([False, True, False, True])
    ours = augment.affine(torch.from_numpy(images), torch.tensor(np.stack(matrices)), flip).numpy()
    expected = np.stack(expected)
    expected[1::2] = expected[1::2, ..., ::-1]  # Keras mirrors after the affine map
    np.testing.assert_allclose(ours, expected, atol=1e-5)


def test_random_affine_draws_keras_ranges():
    g = torch.Generator().manual_seed(0)
    ramp = torch.arange(32.0).expand(200, 1, 32, 32).contiguous()  # each pixel holds its column
    out = augment.random_affine(ramp, g, zoom=0.2, horizontal_flip=True)
    slope = (out[:, 0, 16, 20] - out[:, 0, 16, 12]) / 8  # the column zoom (negative when mirrored)
    assert torch.all((slope.abs() >= 0.8 - 1e-4) & (slope.abs() <= 1.2 + 1e-4))
    assert 70 < int((slope < 0).sum()) < 130  # mirrored with probability 1/2
    assert slope.abs().std() > 0.05  # each image its own draw
    again = augment.random_affine(ramp, torch.Generator().manual_seed(0), zoom=0.2, horizontal_flip=True)
    assert torch.equal(out, again)
    assert torch.equal(augment.random_affine(ramp[:3], g), ramp[:3])  # nothing asked, nothing changed
    with pytest.raises(ValueError, match=r"random_affine: expected images \(N, C, H, W\)"):
        augment.random_affine(torch.zeros(2, 5), g)


def test_augmented_runs_keep_their_batch_order_and_are_reproducible(cifar):
    ds = data.load(data.find(str(cifar), "cifar-10"))
    config = RunConfig(ModelSpec("mlp", 1, 8, "relu", "bn"), batch_size=6, steps=4, eval_every=2, augment="shear-zoom-flip")
    a, b = train(config, ds), train(config, ds)
    plain = train(config.but(augment="none"), ds)
    assert a["train_loss"] == b["train_loss"] and a["train_loss"] != plain["train_loss"]
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert "augment" not in config.but(augment="none").to_dict()  # an unaugmented run keeps its cache key
    mnist1d_like = data.load("random-binary")
    assert "transforms images (C, H, W), the samples have shape (20,)" in config.misfit(mnist1d_like)
    with pytest.raises(ValueError, match="augment must be one of"):
        config.but(augment="mixup")


# --- the measure heldout and the probe activation_inputs, on cases known by hand -------------------


def test_evaluate_is_the_objective_and_the_accuracy_in_eval_mode():
    spec = ModelSpec("mlp", 1, 2, "relu", head="sigmoid", kernel_l2=0.5, dropout=0.5)
    model = build(spec, (2,), 2)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model[1].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))  # the hidden kernel: sum of squares 5
    x, y = torch.randn(7, 2), torch.tensor([0, 1, 0, 0, 1, 0, 1])
    loss, accuracy = measures.evaluate(model.train(), x, y, spec, batch=3)
    # the output is 0 for every sample: binary cross-entropy ln 2, class 0 predicted; plus 0.5 x 5
    assert loss == pytest.approx(math.log(2) + 2.5) and accuracy == pytest.approx(4 / 7)
    assert model.training  # the modes are put back


def test_heldout_is_measured_at_every_log_and_at_the_end(mnist1d):
    config = RunConfig(ModelSpec("mlp", 1, 8, "relu", "bn"), steps=25, eval_every=10, measures=("heldout",))
    result = train(config, mnist1d)
    h = result["measures"]["heldout"]
    assert h["step"] == [0, 10, 20, 25]
    assert h["value"][-1]["test_accuracy"] == result["final_test_accuracy"]
    assert (h["value"][0]["val_samples"], h["value"][0]["test_samples"]) == (1000, 1000)


def test_activation_inputs_are_the_percentiles_of_each_layers_first_channel():
    spec = ModelSpec("mlp", 2, 2, "relu")
    model = build(spec, (1,), 2)
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0], [0.0]]))  # channel 0 of layer 1's pre-activation is x
        model[1].bias.zero_()
        model[3].weight.copy_(torch.tensor([[-2.0, 0.0], [0.0, 0.0]]))  # layer 2's is -2 relu(x) + 3
        model[3].bias.copy_(torch.tensor([3.0, 0.0]))
    x = torch.arange(101.0).view(101, 1)  # 0..100: the q-quantile is 100 q
    p15, p50, p85 = [15.0, 50.0, 85.0]
    got = PROBES["activation_inputs"](model, spec, x)
    assert got[0] == pytest.approx([p15, p50, p85])
    assert got[1] == pytest.approx([3 - 2 * p85, 3 - 2 * p50, 3 - 2 * p15])


def test_drift_is_the_range_each_percentile_sweeps():
    probes = [[[0, 1, 2], [5, 5, 5]], [[1, 1, 2], [5, 6, 9]], [[-1, 1, 2], [5, 5, 5]]]  # 3 logs, 2 layers
    run = Run(None, {"probes": {"activation_inputs": probes}})
    assert vgg_noise_cifar10.drifts(run) == pytest.approx([(2 + 0 + 0) / 3, (0 + 1 + 4) / 3])


# --- verdicts on constructed figures ---------------------------------------------------------------


def figures_of_the_blog(sigmoid_plain_accuracy, loss_gap, noise=0.05):
    f = {"chance accuracy": 0.01}
    f["final test accuracy, sigmoid, no BN"] = stats.stat(sigmoid_plain_accuracy, resolution=1e-4)
    for act, gap in (("sigmoid", loss_gap), ("relu", loss_gap)):
        f[f"final test loss, {act}, BN"] = stats.stat([2.0 + noise * i for i in range(5)])
        f[f"final test loss, {act}, no BN"] = stats.stat([2.0 + gap + noise * i for i in range(5)])
    return f


def test_keras_cnn_cifar100_verdict():
    def verdict(figures):
        return stats.decide(keras_cnn_cifar100.parts(figures))

    assert verdict(figures_of_the_blog([0.01] * 5, 1.0)).verdict == stats.REPRODUCED
    # the plain sigmoid network learnt something (3% against 1% chance): "never better than random" fails
    assert verdict(figures_of_the_blog([0.03, 0.031, 0.029, 0.03, 0.03], 1.0)).verdict == stats.NOT_REPRODUCED
    assert verdict(figures_of_the_blog([0.01] * 5, -0.5)).verdict == stats.NOT_REPRODUCED  # BN worse
    assert verdict(figures_of_the_blog([0.01] * 5, 0.08, noise=0.3)).verdict == stats.INCONCLUSIVE


def figures_of_the_vgg(drift_noisy, accuracies, spread=0.02):
    f = {}
    for label, acc in zip(("no BN", "BN", "noisy BN"), accuracies):
        f[f"final training accuracy (eval mode), {label}"] = stats.stat([acc + 0.002 * i for i in range(5)])
    f["drift of the layers' inputs (mean over layers), BN"] = stats.stat([0.5 + 0.02 * i for i in range(5)])
    f["drift of the layers' inputs (mean over layers), noisy BN"] = stats.stat([drift_noisy + spread * (i - 2) for i in range(5)])
    return f


def test_vgg_noise_cifar10_verdict():
    def verdict(figures):
        return stats.decide(vgg_noise_cifar10.parts(figures))

    assert verdict(figures_of_the_vgg(2.0, (0.6, 0.9, 0.88))).verdict == stats.REPRODUCED
    assert verdict(figures_of_the_vgg(0.5, (0.6, 0.9, 0.88))).verdict == stats.NOT_REPRODUCED  # as stable as BN
    assert verdict(figures_of_the_vgg(2.0, (0.9, 0.9, 0.88))).verdict == stats.NOT_REPRODUCED  # no better than no BN
    assert verdict(figures_of_the_vgg(0.65, (0.6, 0.9, 0.88), spread=0.2)).verdict == stats.INCONCLUSIVE


def test_keras_dense_synthetic_verdict_is_the_summary_against_the_tutorials():
    runs = keras_dense_synthetic.runs(PROFILES["tiny"])
    table = keras_dense_synthetic.summary(runs[0])
    assert (table.total, table.trainable, table.non_trainable) == (3841, 3649, 192)
    figures = {"parameters (total, trainable, non-trainable)": [3841, 3649, 192], "the tutorial's model.summary()": [3841, 3649, 192]}
    assert stats.decide(keras_dense_synthetic.parts(figures)).verdict == stats.REPRODUCED
    figures["parameters (total, trainable, non-trainable)"] = [3841, 3841, 0]  # moving statistics counted as trainable
    assert stats.decide(keras_dense_synthetic.parts(figures)).verdict == stats.NOT_REPRODUCED


# --- the profile: what runs where, skipped data, each experiment on the tiny budget ----------------


def test_what_each_profile_runs():
    assert [c.name for c in for_profile("sources")] == list(SOURCES)
    assert [c.name for c in for_profile("quick")] == list(CLAIMS) == [c.name for c in for_profile("tiny")]
    assert for_profile("tiny", ["keras-cnn-cifar100"])[0] is SOURCES["keras-cnn-cifar100"]
    with pytest.raises(ValueError, match="keras-cnn-cifar100 cannot run in the quick profile"):
        for_profile("quick", ["keras-cnn-cifar100"])
    with pytest.raises(ValueError, match="faster-training cannot run in the sources profile"):
        for_profile("sources", ["faster-training"])
    with pytest.raises(ValueError, match="the source experiments run in the sources profile"):
        SOURCES["keras-dense-synthetic"].runs(PROFILES["quick"])


def test_as_written(cifar):
    """The sources profile trains what the sources wrote: the budgets, batches and optimizers."""
    written = Profile("sources", (2,), str(cifar))
    by_name = {name: c.runs(written) for name, c in SOURCES.items()}
    blog = by_name["keras-cnn-cifar100"]
    assert {(r.steps, r.eval_every, r.batch_size, r.optimizer, r.lr, r.preprocess, r.augment) for r in blog} == {
        (40000, 2000, 80, "rmsprop", 1e-3, "center", "shear-zoom-flip")
    }
    assert {r.model.activation + "/" + r.model.norm for r in blog} == {"sigmoid/none", "sigmoid/bn", "relu/none", "relu/bn"}
    assert all(r.model.init == "glorot" and r.model.norm_momentum == 0.01 and r.model.norm_eps == 1e-3 for r in blog)
    assert blog[0].data == str(cifar / "cifar-100-python") and len(blog) == 8
    vgg = by_name["vgg-noise-cifar10"]
    assert {(r.steps, r.batch_size, r.optimizer, r.lr, r.model.init) for r in vgg} == {(15000, 128, "sgd", 0.1, "torch")}
    assert {(r.model.norm, r.model.noise) for r in vgg} == {("none", False), ("bn", False), ("bn", True)}
    dense = by_name["keras-dense-synthetic"]
    assert {(r.steps, r.batch_size, r.optimizer, r.data, r.preprocess) for r in dense} == {(3100, 32, "adam", "random-binary", "none")}
    for runs in by_name.values():
        assert len({r.key() for r in runs}) == len(runs) and {r.seed for r in runs} == {0, 1}


def test_experiments_whose_data_is_not_given_are_skipped_with_the_reason(cifar):
    planned, skipped = rep.plan(for_profile("sources"), PROFILES["sources"])  # --data left at mnist1d
    assert list(planned) == ["keras-dense-synthetic"]
    assert skipped["keras-cnn-cifar100"].startswith("the data it needs is not given: it needs CIFAR-100 (python batches")
    assert "cifar-10-batches-py/" in skipped["vgg-noise-cifar10"]
    planned, skipped = rep.plan(for_profile("sources"), Profile("sources", (2,), str(cifar / "cifar-10-batches-py")))
    assert list(planned) == ["keras-dense-synthetic"] and "holds none" in skipped["keras-cnn-cifar100"]
    # CIFAR-10 found, but the test files hold fewer images than the source's batch of 128
    assert skipped["vgg-noise-cifar10"] == "its networks cannot train on this data: RunConfig: batch_size 128 exceeds the 36 training samples"


@pytest.mark.slow
def test_cli_skips_what_is_not_given_and_refuses_what_is_wrong(tmp_path):
    out = tmp_path / "out"
    run = cli("reproduce", "--profile", "sources", "--claims", "keras-cnn-cifar100", "vgg-noise-cifar10", "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr and "runs to train" not in run.stderr
    assert "skipping keras-cnn-cifar100: the data it needs is not given: it needs CIFAR-100" in run.stderr
    assert re.search(r"keras-cnn-cifar100 +skipped: the data it needs is not given", run.stdout), run.stdout
    doc = json.loads((out / "results.json").read_text())
    assert [c["verdict"] for c in doc["claims"]] == ["skipped", "skipped"] and doc["profile"]["name"] == "sources"
    for args, message in [
        (("--profile", "sources", "--data", str(tmp_path / "nowhere")), "no such dataset folder"),
        (("--profile", "quick", "--claims", "vgg-noise-cifar10"), "vgg-noise-cifar10 cannot run in the quick profile"),
        (("--profile", "sources", "--claims", "placement"), "placement cannot run in the sources profile"),
    ]:
        run = cli("reproduce", *args, "--out", str(tmp_path / "o"))
        assert run.returncode == 2 and message in run.stderr and run.stderr.count("\n") == 1, run.stderr
    listed = cli("claims")
    assert all(f"{name}\n  source:" in listed.stdout for name in SOURCES)


def test_keras_dense_synthetic_on_the_tiny_budget(tmp_path):
    doc = rep.reproduce(["keras-dense-synthetic"], PROFILES["tiny"], tmp_path, jobs=1, progress=False)
    (entry,) = doc["claims"]
    assert entry["verdict"] == stats.REPRODUCED
    assert entry["figures"]["parameters (total, trainable, non-trainable)"] == [3841, 3649, 192]
    assert entry["figures"]["final validation accuracy"]["n"] == 2
    assert (tmp_path / "plots" / "keras-dense-synthetic.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["keras-cnn-cifar100", "vgg-noise-cifar10"])
def test_cifar_experiments_on_the_tiny_budget(name, cifar, tmp_path):
    doc = rep.reproduce([name], Profile("tiny", (2,), str(cifar)), tmp_path, jobs=1, progress=False)
    (entry,) = doc["claims"]
    assert entry["verdict"] in (stats.REPRODUCED, stats.NOT_REPRODUCED, stats.INCONCLUSIVE), entry["explanation"]
    figures = [v for v in entry["figures"].values() if isinstance(v, dict) and "mean" in v]
    assert figures and all(f["n"] == 2 for f in figures)
    runs = [doc["runs"][k] for k in entry["runs"]]
    assert all(r["config"]["data"].startswith(str(cifar)) and r["result"]["measures"]["heldout"]["value"] for r in runs)
    assert (tmp_path / "plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert name in (tmp_path / "report.md").read_text()
