"""Your own model with all of convae behind it (issue 32): the public contract, registration by decorator, by
--plugin and by an installed entry point, run folders that record which code they hold (and never import code they
were not given), the example plug-ins (a decoder, the VampPrior, a planar flow) through train, resume, a packed sweep,
eval with the IW bound, load in a new process, sampling and export, and an exact check of the bounds on probabilistic
PCA."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import convae
from convae.config import TrainConfig
from convae.models import build_model
from convae.models.registry import entry, load_plugin, model_names
from convae.runs import RunDir
from convae.runtime import Runtime
from convae.training import train
from convae.training.packed import Pack

from conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "plugins" / "src"
sys.path.insert(0, str(EXAMPLES))  # the examples' modules, importable as --plugin names them
for _module in ("nnup", "vamp", "planar", "ppca"):
    load_plugin(f"convae_examples.{_module}")

from convae_examples.ppca import exact_log_likelihood, exact_posterior  # noqa: E402

PYTHONPATH = os.pathsep.join([str(EXAMPLES), os.environ.get("PYTHONPATH", "")])


def tiny(out, **kw) -> TrainConfig:
    settings = dict(epochs=2, batch_size=32, quiet=True, device="cpu", out=str(out), eval_batch_size=64, report=False,
                    tensorboard=False)
    return TrainConfig(**{**settings, **kw})


def convae_process(*argv, cwd=None, pythonpath=PYTHONPATH, check=True) -> subprocess.CompletedProcess:
    """``python -m convae argv`` in a fresh process (nothing registered but what it imports itself)."""
    env = {**os.environ, "PYTHONPATH": pythonpath}
    result = subprocess.run([sys.executable, "-m", "convae", *map(str, argv)], capture_output=True, text=True,
                            cwd=cwd, env=env, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr[-2000:]
    return result


# -- the contract ----------------------------------------------------------------------------------------------------


def test_the_public_contract_is_small_documented_and_what_the_built_in_models_use():
    for name in convae.__all__:
        assert getattr(convae, name) is not None, name
    for name in ("seed", "fc", "resize", "subpixel", "resnet", "pixel", "ladder", "ladder-pixel"):
        known = entry(name)
        assert known.builtin and callable(known.factory)  # registered through register_model, like a plug-in
        model = build_model(name)
        assert isinstance(model, convae.VAE) and isinstance(model.prior, convae.Prior)
        assert isinstance(model.posterior, convae.Posterior)
    contract = (ROOT / "docs" / "own-model.md").read_text()
    for name in convae.__all__:
        if not name.startswith("__"):
            assert f"`{name}" in contract or f"convae.{name}" in contract, f"{name} is not documented"


def test_nothing_outside_the_models_asks_a_model_by_name_or_class():
    """Training, evaluation, export, inference and the sweep ask the model (its densities, its terms), never which
    model it is: a plug-in gets every piece of the machinery the built-in models get."""
    import re

    asks = re.compile(r"isinstance\([^)]*(Ladder|TopDown|BottomUp|PixelDecoder)|config\.model\s*(==|!=|in)\s*[\"'(]|"
                      r"MODELS\[|\bspec\.builder|hasattr\([^)]*(named_groups|groups|head|prior|posterior)")
    offenders = []
    for path in (ROOT / "src" / "convae").rglob("*.py"):
        if "models" in path.relative_to(ROOT / "src" / "convae").parts or path.name == "info.py":
            continue  # the models themselves; `convae models` lists the built-in recipes' encoders
        for k, line in enumerate(path.read_text().splitlines(), 1):
            if asks.search(line):
                offenders.append(f"{path.name}:{k}: {line.strip()}")
    assert not offenders, offenders


def test_register_model_takes_a_factory_checks_its_options_and_refuses_a_taken_name(tmp_path, capsys, idx_dir):
    plugin = tmp_path / "mine.py"
    plugin.write_text(
        "import convae\n\n"
        "@convae.register_model('mine-fc')\n"
        "def build(image_size, channels, likelihood, classes, *, latent_dim=4):\n"
        "    '''a tiny fc VAE. More words'''\n"
        "    if latent_dim > 64:\n"
        "        raise ValueError(f'latent_dim {latent_dim}: at most 64')\n"
        "    return convae.VAE(convae.make_encoder('mlp', image_size, latent_dim, channels, classes),\n"
        "                      convae.make_decoder('fc', latent_dim + classes, image_size,\n"
        "                                          channels * likelihood.params_per_channel),\n"
        "                      latent_dim, likelihood, classes)\n"
        "\n@convae.register_model('not-a-vae')\n"
        "def build_wrong(image_size, channels, likelihood, classes):\n"
        "    return object()\n")
    base = ["train", "--plugin", str(plugin), "--data-dir", str(idx_dir), "--device", "cpu", "--quiet",
            "--max-steps", "3", "--no-report", "--no-tensorboard"]
    code, out, err = run_cli(capsys, *base, "--model", "mine-fc", "--model-option", "latent_dim=6", "--out",
                             str(tmp_path / "run"))
    assert code == 0, err
    settings = json.loads((tmp_path / "run" / "config.json").read_text())
    assert settings["config"]["model_options"] == {"latent_dim": 6}
    assert settings["model_code"]["module"] == "mine" and len(settings["model_code"]["source_sha256"]) == 64
    assert entry("mine-fc").description == "a tiny fc VAE"
    for option, said in ((["--model-option", "latent_dim=100"], "--model mine-fc: latent_dim 100: at most 64"),
                         (["--model-option", "width=3"], "--model-option width: model 'mine-fc' takes no such option"),
                         (["--model-option", "width"], "--model-option width: give KEY=VALUE")):
        code, _, err = run_cli(capsys, *base, "--model", "mine-fc", *option, "--out", str(tmp_path / "bad"))
        assert code == 2 and said in err and err.count("\n") == 1, err
    code, _, err = run_cli(capsys, *base, "--model", "not-a-vae", "--out", str(tmp_path / "bad"))
    assert code == 2 and "returned a object, not a convae.VAE" in err
    code, _, err = run_cli(capsys, "train", "--plugin", "no_such_module_here", "--quiet")
    assert code == 2 and "--plugin no_such_module_here: no module" in err
    with pytest.raises(ValueError, match="registered already, by convae.models.builtin"):
        convae.register_model("seed")(lambda *a, **k: None)
    code, out, _ = run_cli(capsys, "train", "--plugin", str(plugin), "--help")
    assert "mine-fc" in out and "vamp" in out  # --help lists the plug-ins' models beside the built-ins


def test_the_plugin_written_in_the_docs_trains_as_the_docs_say(tmp_path, idx_dir, capsys):
    """docs/own-model.md's 30-line plug-in, as it stands there, through `convae train --plugin`."""
    doc = (ROOT / "docs" / "own-model.md").read_text()
    code = doc.split("## From nothing")[1].split("```python\n")[1].split("```")[0]
    assert len(code.strip().splitlines()) <= 32
    (tmp_path / "own_model_doc.py").write_text(code)
    done, _, err = run_cli(capsys, "train", "--plugin", str(tmp_path / "own_model_doc.py"), "--model", "mine",
                           "--model-option", "width=8", "--data-dir", str(idx_dir), "--device", "cpu", "--quiet",
                           "--max-steps", "2", "--no-report", "--no-tensorboard", "--out", str(tmp_path / "run"))
    assert done == 0, err
    assert RunDir(tmp_path / "run").metrics()[-1]["step"] == 2


# -- the examples, end to end ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["nnup", "vamp", "planar"])
def test_an_example_plugin_resumes_bit_for_bit(tmp_path, tiny_data, name):
    """Stopped at step 6 and resumed to 12: the same weights (the prior's and posterior's own too) and metrics."""
    options = {"width": 8} if name == "nnup" else {}
    whole = train(tiny(tmp_path / "whole", model=name, max_steps=12, model_options=options), data=tiny_data,
                  log=lambda s: None)
    train(tiny(tmp_path / "cut", model=name, max_steps=6, model_options=options), data=tiny_data, log=lambda s: None)
    resumed = train(tiny(tmp_path / "cut", model=name, max_steps=12, model_options=options), data=tiny_data,
                    resume=True, log=lambda s: None)
    a, b = RunDir(tmp_path / "whole").latest_checkpoint().tensors, RunDir(tmp_path / "cut").latest_checkpoint().tensors
    assert a.keys() == b.keys() and any(k.startswith(("prior.", "posterior.", "model.prior.", "model.posterior."))
                                        for k in a) == (name != "nnup")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    by_step = {m["step"]: m["test_neg_elbo"] for m in resumed.metrics}  # it also holds the cut at step 6
    assert [(m["step"], m["test_neg_elbo"]) for m in whole.metrics] == [(m["step"], by_step[m["step"]])
                                                                         for m in whole.metrics] != []


@pytest.mark.layouts  # compares packed arithmetic with the solo run's
@pytest.mark.parametrize("name", ["nnup", "vamp", "planar"])
def test_packed_members_of_a_plugin_each_train_their_own_prior_and_posterior(tmp_path, tiny_data, name):
    """Batched (one vmapped pass): each member's loss reads its own pseudo-inputs / flow, and equals its solo run to
    float32 rounding grown over 8 steps (measured: 1e-9 relative, while a member at lr 2e-3 grows nnup's rounding to
    2e-4 by step 8, as early training's chaos does, and to 2.0e-4 on the other member under OMP_NUM_THREADS=1 on an
    AMD EPYC: hence 1e-3; that each member trained its own prior and flow is checked on the tensors below)."""
    members = [dict(seed=0), dict(seed=1, beta=0.5)]
    options = {"width": 8} if name == "nnup" else {}
    configs = [tiny(tmp_path / f"packed{k}", model=name, max_steps=8, model_options=options, **m)
               for k, m in enumerate(members)]
    outcomes = Pack(configs, data=tiny_data, runtime=Runtime(), strategy="batched", log=lambda s: None).run()
    assert [o.status for o in outcomes] == ["done", "done"]
    for k, m in enumerate(members):
        solo = train(tiny(tmp_path / f"solo{k}", model=name, max_steps=8, model_options=options, **m),
                     data=tiny_data, log=lambda s: None)
        packed = RunDir(tmp_path / f"packed{k}").metrics()
        assert packed[-1]["test_neg_elbo"] == pytest.approx(solo.metrics[-1]["test_neg_elbo"], rel=1e-3)
        own = {n: t for n, t in RunDir(tmp_path / f"packed{k}").latest_checkpoint().tensors.items()
               if ".prior." in f".{n}" or ".posterior." in f".{n}"}
        solo_own = RunDir(tmp_path / f"solo{k}").latest_checkpoint().tensors
        assert bool(own) == (name != "nnup")
        assert all(torch.allclose(t, solo_own[n], rtol=1e-3, atol=1e-5) for n, t in own.items())
    first, second = (RunDir(tmp_path / f"packed{k}").latest_checkpoint().tensors for k in range(2))
    assert all(not torch.equal(first[n], second[n]) for n in own)  # not the first member's for both


def test_a_model_whose_forward_draws_its_own_noise_packs_side_by_side_with_one_line(tmp_path, tiny_data):
    """nn.Dropout draws from torch's global generator, which vmap cannot batch: the pack says so in one line and
    steps its members side by side, each run finishing (never a vmap traceback)."""
    plugin = tmp_path / "dropping.py"
    plugin.write_text(
        "import torch.nn as nn\nimport convae\n\n"
        "class Dropped(nn.Module):\n"
        "    def __init__(self, inner):\n"
        "        super().__init__()\n"
        "        self.inner, self.drop = inner, nn.Dropout(0.2)\n"
        "    def forward(self, z):\n"
        "        return self.inner(self.drop(z))\n\n"
        "@convae.register_model('dropping')\n"
        "def build(image_size, channels, likelihood, classes):\n"
        "    return convae.VAE(convae.make_encoder('mlp', image_size, 8, channels),\n"
        "                      Dropped(convae.make_decoder('fc', 8, image_size, channels)), 8, likelihood)\n")
    load_plugin(str(plugin))
    said = []
    configs = [tiny(tmp_path / f"m{k}", model="dropping", max_steps=4, seed=k) for k in range(2)]
    outcomes = Pack(configs, data=tiny_data, runtime=Runtime(), strategy="batched", log=said.append).run()
    assert [o.status for o in outcomes] == ["done", "done"]
    line = next(s for s in said if "side by side" in s)
    assert "model dropping" in line and "random" in line and "convae.Dropout" in line and "\n" not in line


def test_an_example_plugin_is_evaluated_loaded_sampled_and_exported_in_fresh_processes(tmp_path, idx_dir, capsys):
    """The run folder names its code; a fresh process rebuilds the model from it (with --plugin, or refuses in one
    line without), the IW bound reads the model's own prior, convae.load reconstructs through the flow, and export
    writes what sampling needs."""
    onnx = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")
    common = ["--data-dir", str(idx_dir), "--device", "cpu", "--quiet", "--max-steps", "6", "--batch-size", "32",
              "--no-report", "--no-tensorboard"]
    for name in ("nnup", "vamp", "planar"):
        code, _, err = run_cli(capsys, "train", "--model", name, *common, "--out", str(tmp_path / name),
                               *(["--model-option", "width=4"] if name == "nnup" else []))
        assert code == 0, err
    refused = convae_process("eval", tmp_path / "vamp", "--iw-samples", "5", pythonpath="", check=False)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "model 'vamp' comes from the plug-in module 'convae_examples.vamp' (as that folder's config.json says), " \
           "which is not loaded; pass --plugin " \
           "convae_examples.vamp" in refused.stderr

    # one fresh process: eval (IW bound) and ONNX export of both through the command line, then convae.load
    script = (
        "import json, sys, torch, convae\n"
        "from convae.cli import main\n"
        "run = sys.argv[1]\n"
        "for name in ('nnup', 'vamp', 'planar'):\n"
        "    assert main(['eval', f'{run}/{name}', '--plugin', f'convae_examples.{name}', '--iw-samples', '20',\n"
        "                 '--test-limit', '64', '--no-pictures']) == 0\n"
        "    assert main(['export', f'{run}/{name}', '--format', 'onnx', '--out', f'{run}/{name}-onnx']) == 0\n"
        "m = convae.load(f'{run}/planar', device='cpu')\n"
        "x = torch.rand(3, 1, 32, 32)\n"
        "with torch.no_grad():\n"
        "    mu, sigma = m.model.encode(x)\n"
        "    through_flow = m.model.likelihood.mean(m.model.decode(m.model.posterior.flow(mu)[0]))\n"
        "    base_only = m.model.likelihood.mean(m.model.decode(mu))\n"
        "got = m.reconstruct(x)\n"
        "print(json.dumps({'flow': (got - through_flow).abs().max().item(), 'base': (got - base_only).abs().max().item(),"
        " 'samples': list(m.sample(4, seed=1).shape), 'repr': repr(m)}))\n")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": PYTHONPATH}, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    checked = json.loads(result.stdout.strip().splitlines()[-1])
    assert checked["flow"] < 1e-6 and checked["base"] > 1e-4 and checked["samples"] == [4, 1, 32, 32]
    assert "posterior PlanarFlow" in checked["repr"]

    vamp, planar = (json.loads((tmp_path / n / "eval" / "eval.json").read_text()) for n in ("vamp", "planar"))
    assert vamp["prior"] == "VampPrior" and vamp["kl"] == "monte carlo" and len(vamp["kl_per_dim"]) == 1
    assert math.isfinite(vamp["iw_nll"]) and vamp["iw_nll"] < vamp["test_neg_elbo"] + 3 * vamp["iw_nll_std_error"]
    assert planar["posterior"] == "PlanarFlow" and planar["active_units"] is None
    assert "not a diagonal Gaussian" in planar["latent_statistics"]
    described = json.loads((tmp_path / "vamp-onnx" / "model.json").read_text())
    assert described["prior"] == "VampPrior" and "prior(noise)" in described["decoder_input"]
    model = convae.load(tmp_path / "vamp", device="cpu").model
    noise = torch.randn(5, model.latent_dim + 1)
    got = onnx.InferenceSession(str(tmp_path / "vamp-onnx" / "prior.onnx")).run(None, {"noise": noise.numpy()})[0]
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(got), model.prior.from_noise(noise, model), atol=1e-5)
    nnup = json.loads((tmp_path / "nnup" / "eval" / "eval.json").read_text())
    assert math.isfinite(nnup["iw_nll"]) and nnup["active_units"] is not None and len(nnup["kl_per_dim"]) == 32
    assert sorted(p.name for p in (tmp_path / "nnup-onnx").iterdir()) == ["decoder.onnx", "encoder.onnx", "model.json"]
    assert sorted(p.name for p in (tmp_path / "planar-onnx").iterdir()) == [
        "decoder.onnx", "encoder.onnx", "model.json", "posterior.onnx"]
    model = convae.load(tmp_path / "planar", device="cpu").model
    mu, sigma, eps = torch.randn(4, 20), torch.rand(4, 20) + 0.1, torch.randn(4, 20)
    got = onnx.InferenceSession(str(tmp_path / "planar-onnx" / "posterior.onnx")).run(
        None, {"mu": mu.numpy(), "sigma": sigma.numpy(), "eps": eps.numpy()})[0]
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(got), model.posterior.rsample((mu, sigma), eps), atol=1e-5)


def test_opening_a_run_never_imports_a_module_nobody_declared_and_warns_when_the_code_changed(tmp_path, idx_dir,
                                                                                              capsys):
    """A run folder's config.json may name any module: convae imports it only where an installed entry point declares
    it or the user passes --plugin. A plug-in whose source changed since the run is loaded with a warning naming
    both versions."""
    plugin = tmp_path / "code" / "tinyplug.py"
    plugin.parent.mkdir()
    plugin.write_text((EXAMPLES / "convae_examples" / "nnup.py").read_text().replace('register_model("nnup"',
                                                                                     'register_model("nnup-copy"'))
    code, _, err = run_cli(capsys, "train", "--plugin", str(plugin), "--model", "nnup-copy", "--model-option",
                           "width=4", "--data-dir", str(idx_dir), "--device", "cpu", "--quiet", "--max-steps", "3",
                           "--no-report", "--no-tensorboard", "--out", str(tmp_path / "run"))
    assert code == 0, err
    marker = tmp_path / "imported"
    (tmp_path / "code" / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    settings = json.loads((tmp_path / "run" / "config.json").read_text())
    assert settings["model_code"]["module"] == "tinyplug"
    settings["model_code"]["module"] = "evil"
    (tmp_path / "forged").mkdir()
    shutil.copytree(tmp_path / "run" / "checkpoints", tmp_path / "forged" / "checkpoints")
    (tmp_path / "forged" / "config.json").write_text(json.dumps(settings))
    plugin.write_text(plugin.read_text() + "\n# changed after training\n")
    script = (
        "import sys\n"
        "from convae.cli import main\n"
        "run = sys.argv[1]\n"
        "print('forged', main(['sample', f'{run}/forged', '-n', '2', '--out', f'{run}/s.png']), flush=True)\n"
        "print('changed', main(['sample', f'{run}/run', '--plugin', 'tinyplug', '-n', '2', '--out', f'{run}/s.png']))\n")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                            cwd=plugin.parent, timeout=300)  # evil.py and tinyplug.py importable from here
    assert "forged 2" in result.stdout and "changed 0" in result.stdout, result.stderr[-2000:]
    assert "model 'nnup-copy' comes from the plug-in module 'evil' (as that folder's config.json says)" in result.stderr
    assert not marker.exists()  # evil.py sat in the current folder, importable, and was not imported
    assert "model 'nnup-copy' (plug-in tinyplug) runs other code than it was trained with: tinyplug.py changed " \
           "(sha256 " in result.stderr
    code, _, err = run_cli(capsys, "train", "--plugin", str(plugin), "--resume", str(tmp_path / "run"), "--max-steps",
                           "4")
    assert code == 0 and "runs other code than it was trained with: tinyplug.py changed" in err
    assert "tinyplug.py changed" in (tmp_path / "run" / "log.txt").read_text()
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["model_code"]
    assert recorded["source_sha256"] != settings["model_code"]["source_sha256"]  # what it goes on with, and before:
    assert [e["source_sha256"] for e in recorded["earlier"]] == [settings["model_code"]["source_sha256"]]


def test_an_installed_plugin_is_found_by_its_entry_point_without_naming_it(tmp_path, idx_dir):
    """examples/plugins installs as a package of its own; its entry points make `convae train --model vamp` work in
    a fresh process with no --plugin, and the run records the distribution's version."""
    source = tmp_path / "src"
    shutil.copytree(EXAMPLES.parent, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", str(site), str(source)], check=True,
                   capture_output=True, timeout=300)
    listed = convae_process("train", "--help", pythonpath=str(site)).stdout
    assert all(name in listed for name in ("seed", "ladder", "nnup", "vamp", "planar", "ppca"))
    convae_process("train", "--model", "vamp", "--model-option", "components=7", "--data-dir", idx_dir, "--device",
                   "cpu", "--quiet", "--max-steps", "3", "--no-report", "--no-tensorboard", "--out", tmp_path / "run",
                   pythonpath=str(site))
    code = json.loads((tmp_path / "run" / "config.json").read_text())["model_code"]
    assert code["distribution"] == "convae-examples" and code["version"] == "0.1.0"
    convae_process("eval", tmp_path / "run", "--test-limit", "32", "--no-pictures", pythonpath=str(site))


def test_a_sweep_puts_a_model_option_on_its_grid(tmp_path, idx_dir, capsys):
    code, _, err = run_cli(capsys, "sweep", "--model", "vamp", "--grid", "model-option.components=3,5", "--seeds", "1",
                           "--data-dir", str(idx_dir), "--device", "cpu", "--quiet", "--max-steps", "2",
                           "--no-report", "--no-tensorboard", "--out", str(tmp_path / "sweep"))
    assert code == 0, err
    runs = sorted((tmp_path / "sweep" / "runs").iterdir())
    assert [json.loads((r / "config.json").read_text())["config"]["model_options"] for r in runs] == [
        {"components": 3}, {"components": 5}]
    shapes = [RunDir(r).latest_checkpoint().tensors["model.prior.pseudo_inputs"].shape[0] for r in runs]
    assert shapes == [3, 5]


# -- the exact check: probabilistic PCA --------------------------------------------------------------------------------


def ppca_model(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("ppca", image_size=8, likelihood="gaussian", gaussian_sigma=0.2,
                        options={"latent_dim": 4}).double().eval()
    with torch.no_grad():
        model.decoder.linear.weight.normal_(0, 0.3)
        model.decoder.linear.bias.uniform_(0.2, 0.6)
    return model


def ppca_bounds(model, images, ks):
    from convae.evaluation.elbo import evaluate_neg_elbo
    from convae.evaluation.likelihood import importance_weighted_nll

    elbo = evaluate_neg_elbo(model, images, batch_size=100)
    return elbo.neg_elbo, [importance_weighted_nll(model, images, k, batch_size=50) for k in ks]


def test_the_bounds_are_exact_where_the_posterior_is_and_tighten_towards_the_exact_likelihood(tiny_data):
    """x = W z + b + 0.2 e on 8 x 8 images: log p(x) is a Gaussian's, computed in closed form (no sampling, nothing
    to tune). (1) With W's columns orthogonal and the encoder set to the true posterior, every importance weight is
    p(x): the one-sample ELBO and the IW bound equal -log p(x) to float64 rounding. (2) With that encoder perturbed,
    the -ELBO and the IW bound lie above -log p(x) and the bound falls towards it as K grows (measured: gaps of 2.69,
    0.36, 0.015 and 0.0004 nats at K = 1, 10, 100, 1000)."""
    from convae.data import EvalImages

    images = EvalImages(tiny_data.test_images, 255.0, 8)
    x = images.floats(0, len(images), torch.float64, torch.device("cpu"))
    model = ppca_model()
    exact_posterior(model)
    exact = -exact_log_likelihood(model, x).mean().item()
    neg_elbo, (iw1, iw7) = ppca_bounds(model, images, (1, 7))
    assert iw1.nll == pytest.approx(exact, abs=1e-9) and iw7.nll == pytest.approx(exact, abs=1e-9)
    assert iw7.std_error > 1  # the images' likelihoods differ; each image's weights do not
    # the -ELBO's likelihood term is one sample's (its KL is closed-form): -log p(x) in expectation only
    assert neg_elbo == pytest.approx(exact, abs=0.1)

    with torch.no_grad():
        model.encoder.mean.weight.add_(0.05 * torch.randn_like(model.encoder.mean.weight))
        model.encoder.log_sigma.add_(0.4)
    neg_elbo, bounds = ppca_bounds(model, images, (1, 10, 100, 1000))
    gaps = [b.nll - exact for b in bounds]
    assert neg_elbo - exact > 1.0  # a visibly loose ELBO
    # each bound is an upper bound up to its Monte-Carlo error (the per-image bounds' spread is in std_error; the
    # gap's own noise is far smaller, so a generous 0.05 nats is allowed below the truth)
    assert all(g > -0.05 for g in gaps), gaps
    assert gaps[0] > gaps[1] > gaps[2] > gaps[3], gaps
    assert gaps[3] < 0.1 * gaps[0], gaps
