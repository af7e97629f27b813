"""--conditional: encoder and decoder read the class label (a conditional VAE)."""

import json

import numpy as np
import pytest
import torch

import convae
from convae.cli import main
from convae.config import TrainConfig
from convae.data import ImageData, evaluation_images
from convae.evaluation.elbo import evaluate_neg_elbo
from convae.models import MODELS, build_model
from convae.training import train

from conftest import idx_folder


def two_sides(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One soft blob per 28 x 28 image, in the left third (label 0) or the right third (label 1)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28]
    labels = rng.integers(0, 2, n)
    cx = np.where(labels == 0, rng.uniform(6, 10, n), rng.uniform(18, 22, n))[:, None, None]
    cy, r = rng.uniform(8, 20, (n, 1, 1)), rng.uniform(2.5, 4, (n, 1, 1))
    images = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r ** 2))
    return (torch.from_numpy(np.clip(images * 255, 0, 255).astype(np.uint8)).view(-1, 1, 28, 28),
            torch.from_numpy(labels))


@pytest.fixture(scope="module")
def sides() -> ImageData:
    (train_x, train_y), (test_x, test_y) = two_sides(512, 0), two_sides(128, 1)
    return ImageData("sides", train_x, train_y, test_x, test_y, levels=255.0)


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory, sides):
    """The fully connected model, conditional, 3 epochs on the two-sided blobs (as IDX files, so the run can
    load its data again)."""
    folder = tmp_path_factory.mktemp("conditional")
    config = TrainConfig(model="fc", conditional=True, epochs=3, batch_size=32, lr=2e-3, quiet=True, device="cpu",
                         data=str(idx_folder(folder / "sides", sides)), out=str(folder / "run"), tensorboard=False,
                         report=False)
    train(config, log=lambda s: None)
    return folder / "run"


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_reads_the_label_in_encoder_and_decoder(name):
    torch.manual_seed(0)
    model = build_model(name, classes=3).eval()
    x, z = torch.rand(2, 1, 32, 32).round(), torch.randn(2, model.latent_dim)
    same, other = torch.tensor([0, 0]), torch.tensor([2, 1])
    onehot = torch.tensor([[1.0, 0, 0], [1.0, 0, 0]])
    if hasattr(model, "groups"):  # a hierarchy adds the label to its top-down start state
        expected = model.parameters_of_x(model.decoder.state(z, onehot), x)
        h = model.decoder.initial(2, onehot)
        torch.testing.assert_close(h, model.decoder.start + model.decoder.label(onehot)[:, :, None, None])
    else:  # the decoder reads [z, one-hot(label)]: the hand-made input gives the same parameters
        hand = torch.cat([z, onehot], 1)
        expected = model.decoder(hand, x) if model.autoregressive else model.decoder(hand)
    torch.testing.assert_close(model.decode(z, x, same), expected)
    assert not torch.allclose(model.decode(z, x, same), model.decode(z, x, other))
    assert not torch.allclose(model.encode(x, same)[0], model.encode(x, other)[0])
    with pytest.raises(ValueError, match="conditional on 3 classes: give the labels"):
        model(x)
    with pytest.raises(ValueError, match="3 labels for 2 images"):
        model.encode(x, torch.tensor([0, 1, 2]))


def test_a_conditional_seed_model_adds_the_label_weights_and_nothing_else():
    plain, conditional = build_model("seed"), build_model("seed", classes=10)
    extra = sum(p.numel() for p in conditional.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == 10 * 500 + 10 * 256 * 4 * 4  # the encoder's first Linear, the decoder's first 4 x 4 kernel


def test_conditional_training_learns_what_the_label_says(conditional_run, sides):
    model = convae.load(conditional_run, device="cpu")
    config = model.config
    true = evaluate_neg_elbo(model.model, evaluation_images(sides.test_images, 255.0, config, sides.test_labels))
    swapped = evaluate_neg_elbo(model.model, evaluation_images(sides.test_images, 255.0, config, 1 - sides.test_labels))
    assert swapped.neg_elbo > true.neg_elbo + 5  # the bound given the right side is the better one

    def mean_column(images):  # the horizontal centre of mass of the samples
        return ((images.sum(2)[:, 0] * torch.arange(32.0)).sum(1) / images.sum((1, 2, 3))).mean()

    assert mean_column(model.sample(200, label=0, seed=0)) + 2 < mean_column(model.sample(200, label=1, seed=0))
    mixed = model.sample(6, seed=1)  # no label: classes drawn uniformly
    assert mixed.shape == (6, 1, 32, 32)
    with pytest.raises(convae.errors.ConfigError, match="conditional on 2 classes: give the labels"):
        model.encode(sides.test_images[:3])
    with pytest.raises(convae.errors.ConfigError, match=r"classes 0..1 of this model \(got 2\)"):
        model.decode(torch.zeros(2, model.latent_dim), labels=[0, 2])
    mu, _ = model.encode(sides.test_images[:4], sides.test_labels[:4])
    assert model.reconstruct(sides.test_images[:4], labels=1).shape == (4, 1, 32, 32) and mu.shape == (4, 20)


def test_conditional_commands_from_train_to_export(conditional_run, sides, tmp_path, capsys):
    settings = json.loads((conditional_run / "config.json").read_text())
    assert settings["config"]["conditional"] and settings["data"]["class_count"] == 2
    run = str(conditional_run)
    assert main(["eval", run, "--json", "--iw-samples", "4", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["conditional"] and "log p(x | label)" in result["protocol"]
    assert "samples_by_class.png" in result["pictures"] and (conditional_run / "eval" / "samples_by_class.png").is_file()

    assert main(["sample", run, "-n", "4", "--label", "1", "--out", str(tmp_path / "s.npz"), "--device", "cpu"]) == 0
    assert np.load(tmp_path / "s.npz")["images"].shape == (4, 1, 32, 32)
    capsys.readouterr()
    assert main(["sample", run, "--label", "2", "--out", str(tmp_path / "bad.png"), "--device", "cpu"]) == 2
    assert "--label 2: labels must be classes 0..1 of this model (got 2)" in capsys.readouterr().err
    assert not (tmp_path / "bad.png").exists()

    assert main(["encode", run, "--out", str(tmp_path / "z.npz"), "--device", "cpu"]) == 0
    z = np.load(tmp_path / "z.npz")
    assert main(["decode", run, str(tmp_path / "z.npz"), "--out", str(tmp_path / "d.npz"), "--device", "cpu"]) == 0
    model = convae.load(conditional_run, device="cpu")
    expected = (model.decode(z["mu"], labels=z["labels"]).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(np.load(tmp_path / "d.npz")["images"], expected)
    np.savez(tmp_path / "bare.npz", z=z["mu"][:3])
    capsys.readouterr()
    assert main(["decode", run, str(tmp_path / "bare.npz"), "--out", str(tmp_path / "b.png"), "--device", "cpu"]) == 2
    assert "needs a 'labels' array" in capsys.readouterr().err
    assert main(["decode", run, str(tmp_path / "bare.npz"), "--label", "0", "--out", str(tmp_path / "b.png"),
                 "--device", "cpu"]) == 0

    assert main(["export", run, "--format", "torchscript", "--out", str(tmp_path / "ts")]) == 0
    assert json.loads((tmp_path / "ts" / "model.json").read_text())["classes"] == 2
    encoder, decoder = (torch.jit.load(tmp_path / "ts" / f"{n}.pt") for n in ("encoder", "decoder"))
    x, latents, labels = torch.rand(3, 1, 32, 32), torch.randn(3, 20), torch.tensor([0, 1, 1])
    onehot = torch.nn.functional.one_hot(labels, 2).float()
    with torch.no_grad():
        torch.testing.assert_close(encoder(x, onehot)[0], model.model.encode(x, labels)[0])
        torch.testing.assert_close(decoder(latents, onehot), model.model.generate(latents, labels=labels))


def test_conditional_needs_labels_and_nothing_is_written_without_them(tiny_data, tmp_path, capsys):
    unlabelled = idx_folder(tmp_path / "blobs", tiny_data)  # every label 0
    out = tmp_path / "run"
    assert main(["train", "--conditional", "--data", str(unlabelled), "--epochs", "1", "--out", str(out),
                 "--device", "cpu", "--quiet"]) == 2
    assert "--conditional: " in (err := capsys.readouterr().err) and "no class labels (every image has label 0)" in err
    assert not out.exists()


def test_a_conditional_model_refuses_data_with_more_classes(conditional_run, tmp_path, capsys):
    capsys.readouterr()
    assert main(["encode", str(conditional_run), "--data", "mnist", "--out", str(tmp_path / "z.npz"),
                 "--device", "cpu"]) == 2
    assert "labels up to 9, but the model of" in capsys.readouterr().err


def test_a_conditional_run_on_generated_shapes_evaluates_every_measure(tmp_path, capsys):
    """Shapes name their classes and have known factors: the factor read-out encodes the training images with
    their labels too, and the per-class picture is labelled by name."""
    run = tmp_path / "run"
    assert main(["train", "--conditional", "--data", "shapes:60", "--model", "fc", "--epochs", "1", "--batch-size",
                 "16", "--device", "cpu", "--quiet", "--no-report", "--no-tensorboard", "--out", str(run),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    assert json.loads((run / "config.json").read_text())["data"]["class_count"] == 3
    capsys.readouterr()
    assert main(["eval", str(run), "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["conditional"] and set(result["factor_recovery"]) >= {"kind_accuracy", "x_r2"}
    assert "samples_by_class.png" in result["pictures"]
    # a class by its name, as the data named it
    model = convae.load(run, device="cpu")
    assert model.class_names == ["circle", "square", "triangle"]
    torch.testing.assert_close(model.sample(2, label="square", seed=0), model.sample(2, label=1, seed=0))
    assert main(["sample", str(run), "--label", "star", "--out", str(tmp_path / "s.png"), "--device", "cpu"]) == 2
    assert "--label star: 'star' is not a class of this model (its classes: circle, square, triangle)" in \
        capsys.readouterr().err
