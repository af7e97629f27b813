"""After training: convae.load and the sample / encode / decode commands."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import convae
from convae.cli import main
from convae.config import TrainConfig
from convae.errors import ConfigError

README = Path(__file__).parent.parent / "README.md"


@pytest.fixture(scope="module")
def run_dir(seed_run):
    return seed_run


def test_load_takes_images_as_users_have_them(run_dir, tiny_data):
    model = convae.load(run_dir, device="cpu")
    assert not model.model.training and model.latent_dim == 100
    uint8 = tiny_data.test_images[:5]                      # N x 1 x 28 x 28 uint8, resized as in training
    mu, sigma = model.encode(uint8)
    assert mu.shape == sigma.shape == (5, 100) and bool((sigma > 0).all())
    as_float = uint8.float() / 255
    torch.testing.assert_close(model.encode(as_float.numpy())[0], mu)   # floats in [0, 1], from NumPy
    torch.testing.assert_close(model.encode(uint8[:, 0])[0], mu)        # N x H x W
    assert torch.equal(model.encode(uint8.numpy().astype(np.uint16) * 257)[0], mu)  # 16 bits, as a 16-bit PNG
    torch.testing.assert_close(model.encode(uint8[0, 0])[0], mu[:1])     # one H x W image
    images = model.decode(mu)
    assert images.shape == (5, 1, 32, 32) and 0 <= images.min() and images.max() <= 1
    torch.testing.assert_close(model.reconstruct(uint8), images)
    samples = model.sample(7, seed=3)
    assert samples.shape == (7, 1, 32, 32) and torch.equal(samples, model.sample(7, seed=3))
    with pytest.raises(ConfigError, match="this model takes 1-channel images"):
        model.encode(np.zeros((2, 3, 32, 32), np.uint8))
    with pytest.raises(ConfigError, match=r"float images must lie in \[0, 1\]"):
        model.encode(np.full((2, 32, 32), 2.0, np.float32))
    half_missing = np.full((2, 32, 32), 0.5, np.float32)
    half_missing[1, 3, 4] = np.nan  # min and max of the rest lie in [0, 1]
    with pytest.raises(ConfigError, match="these hold NaN or infinite values"):
        model.encode(half_missing)
    with pytest.raises(ConfigError, match="this model takes N x 100"):
        model.decode(np.zeros((2, 7)))


def test_the_readme_api_example_runs(run_dir, monkeypatch):
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    example = block.replace('"runs/notebook"', repr(str(run_dir.parent / "notebook")))
    monkeypatch.chdir(run_dir.parent)
    namespace = {}
    exec(compile(example.replace("epochs=2", "epochs=1, train_limit=64, test_limit=64, quiet=True"),
                 "README", "exec"), namespace)
    assert namespace["z_mu"].shape[1] == namespace["model"].latent_dim


def test_sample_encode_decode_commands(run_dir, tmp_path, capsys, idx_dir):
    assert main(["sample", str(run_dir), "-n", "9", "--out", str(tmp_path / "grid.png"), "--device", "cpu"]) == 0
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size[0] > 3 * 32
    assert main(["sample", str(run_dir), "-n", "4", "--out", str(tmp_path / "s.npz"), "--device", "cpu"]) == 0
    assert np.load(tmp_path / "s.npz")["images"].shape == (4, 1, 32, 32)

    assert main(["encode", str(run_dir), "--data", str(idx_dir), "--out", str(tmp_path / "z.npz"),
                 "--device", "cpu"]) == 0
    z = np.load(tmp_path / "z.npz")
    assert z["mu"].shape == (64, 100) and z["sigma"].shape == (64, 100) and z["labels"].shape == (64,)
    assert main(["decode", str(run_dir), str(tmp_path / "z.npz"), "--out", str(tmp_path / "d.npz"),
                 "--device", "cpu"]) == 0
    decoded = np.load(tmp_path / "d.npz")["images"]
    assert decoded.shape == (64, 1, 32, 32) and decoded.dtype == np.uint8
    capsys.readouterr()
    assert main(["sample", str(run_dir), "--out", str(tmp_path / "x.txt"), "--device", "cpu"]) == 2
    assert "give a .npz (arrays) or .png/.jpg" in capsys.readouterr().err
    assert not (tmp_path / "x.txt").exists()
    assert main(["sample", str(run_dir), "--label", "3", "--out", str(tmp_path / "l.png"), "--device", "cpu"]) == 2
    assert "--label 3: the model of" in (err := capsys.readouterr().err) and "is not conditional" in err


def test_latent_usage_tells_a_collapsed_posterior_from_a_used_one(run_dir, tiny_data):
    from convae.evaluation.latents import latent_usage, posterior_parameters
    from convae.data import EvalImages

    n, d = 300, 10
    collapsed = latent_usage(torch.zeros(n, d, dtype=torch.float64), torch.ones(n, d, dtype=torch.float64))
    assert collapsed["active_units"] == 0 and all(abs(k) < 1e-6 for k in collapsed["kl_per_dim"])
    assert abs(collapsed["mutual_information"]) < 1e-9  # every q(z|x) is the same: nothing about x in z

    generator = torch.Generator().manual_seed(0)
    mu = torch.randn(n, d, generator=generator, dtype=torch.float64) * 3
    sigma = torch.full((n, d), 0.1, dtype=torch.float64)
    used = latent_usage(mu, sigma)
    assert used["active_units"] == d
    assert used["mutual_information"] == pytest.approx(used["mutual_information_max"], abs=0.05)  # z pins down x
    kl = 0.5 * (mu.square() + 0.01 - torch.log(torch.tensor(1e-8 + 0.01)) - 1).mean(0)
    assert used["kl_per_dim"] == pytest.approx(kl.tolist())

    model = convae.load(run_dir, device="cpu").model
    trained = latent_usage(*posterior_parameters(model, EvalImages(tiny_data.test_images, 255.0, 32)))
    assert trained["active_units"] > 0 and trained["mutual_information"] > 0.5


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("name, encoder", [("fc", "mlp"), ("resize", "conv"), ("resnet", "resnet")])
def test_every_exportable_model_exports_with_the_batch_size_free_and_is_left_in_eval_mode(name, encoder, fmt,
                                                                                         tmp_path):
    """The export traces at batch 2; each model must then run at other batch sizes (a len() in a forward pass
    would be recorded as the constant 2), and the model exported must not be left in training mode."""
    from types import SimpleNamespace

    from convae.export import export
    from convae.models import build_model

    torch.manual_seed(0)
    vae = build_model(name, encoder).eval()
    trained = SimpleNamespace(model=vae, channels=1, levels=255.0, config=TrainConfig(model=name, encoder=encoder),
                              run=SimpleNamespace(path=tmp_path, step=0))
    if fmt == "onnx":
        ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")
    export(trained, fmt, tmp_path / fmt)
    assert not any(m.training for m in vae.modules())
    x, z = torch.rand(5, 1, 32, 32), torch.randn(3, vae.latent_dim)
    with torch.no_grad():
        want = [*vae.encoder(x), vae.likelihood.mean(vae.decoder(z))]
        if fmt == "torchscript":
            encoder_file, decoder_file = (torch.jit.load(tmp_path / fmt / f"{n}.pt") for n in ("encoder", "decoder"))
            got = [*encoder_file(x), decoder_file(z)]
        else:
            sessions = [ort.InferenceSession(str(tmp_path / fmt / f"{n}.onnx")) for n in ("encoder", "decoder")]
            got = [torch.from_numpy(a) for a in sessions[0].run(None, {"images": x.numpy()})]
            got.append(torch.from_numpy(sessions[1].run(None, {"z": z.numpy()})[0]))
    assert [g.shape for g in got] == [w.shape for w in want]
    assert all(torch.allclose(g, w, atol=1e-5) for g, w in zip(got, want))


@pytest.mark.parametrize("fmt", ["torchscript", "safetensors", "onnx"])
def test_exported_encoder_and_decoder_match_eager_pytorch(run_dir, tmp_path, fmt):
    import json

    from convae.models import build_model

    model = convae.load(run_dir, device="cpu")
    if fmt == "onnx":
        pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
    assert main(["export", str(run_dir), "--format", fmt, "--out", str(tmp_path / fmt)]) == 0
    description = json.loads((tmp_path / fmt / "model.json").read_text())
    assert description["latent_dim"] == 100 and description["image_shape"] == [1, 32, 32]
    x = torch.rand(5, 1, 32, 32)
    z = torch.randn(3, 100)
    with torch.no_grad():
        mu, sigma = model.model.encoder(x)
        images = model.model.likelihood.mean(model.model.decoder(z))
    if fmt == "torchscript":
        encoder, decoder = (torch.jit.load(tmp_path / fmt / f"{n}.pt") for n in ("encoder", "decoder"))
        got_mu, got_sigma = encoder(x)
        got_images = decoder(z)
    elif fmt == "safetensors":
        from safetensors.torch import load_file

        fresh = build_model("seed").eval()
        fresh.encoder.load_state_dict(load_file(tmp_path / fmt / "encoder.safetensors"))
        fresh.decoder.load_state_dict(load_file(tmp_path / fmt / "decoder.safetensors"))
        with torch.no_grad():
            got_mu, got_sigma = fresh.encoder(x)
            got_images = torch.sigmoid(fresh.decoder(z))
    else:
        ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")
        encoder = ort.InferenceSession(str(tmp_path / fmt / "encoder.onnx"))
        decoder = ort.InferenceSession(str(tmp_path / fmt / "decoder.onnx"))
        got_mu, got_sigma = (torch.from_numpy(a) for a in encoder.run(None, {"images": x.numpy()}))
        got_images = torch.from_numpy(decoder.run(None, {"z": z.numpy()})[0])
    torch.testing.assert_close(got_mu, mu, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_sigma, sigma, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_images, images, rtol=1e-4, atol=1e-5)


def test_the_mutual_information_by_products_is_the_pairwise_formula():
    """latent_usage computes log q(z_j | x_i) for every pair through matrix products (a hierarchy's 3,328 latent
    values would need an N x N x D tensor otherwise); the same numbers as the formula written out pair by pair."""
    import math

    from convae.evaluation.latents import latent_usage

    torch.manual_seed(0)
    mu = torch.randn(300, 50, dtype=torch.float64)
    sigma = torch.rand(300, 50, dtype=torch.float64) * 0.5 + 0.05
    n, d = mu.shape
    z = mu + sigma * torch.randn(mu.shape, generator=torch.Generator().manual_seed(0), dtype=mu.dtype)
    normal = -0.5 * d * math.log(2 * math.pi)
    own = normal - sigma.log().sum(1) - 0.5 * ((z - mu) / sigma).square().sum(1)
    pairs = normal - sigma.log().sum(1)[None] - 0.5 * ((z[:, None] - mu[None]) / sigma[None]).square().sum(2)
    expected = (own - (torch.logsumexp(pairs, 1) - math.log(n))).mean().item()
    assert latent_usage(mu, sigma)["mutual_information"] == pytest.approx(expected, abs=1e-10)
