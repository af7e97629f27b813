import pytest
import torch

import convae.training.engine as engine
from convae.benchmarking.bench import BenchSettings, format_table, run_bench
from convae.cli import main
from convae.config import TrainConfig
from convae.models import build_model
from convae.objectives import Objective, training_loss


def test_bf16_autocast_loss_is_close_to_fp32():
    torch.manual_seed(0)
    model = build_model("seed").eval()
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        torch.manual_seed(1)
        fp32 = training_loss(model, x, Objective(), precision="fp32")[0]
        torch.manual_seed(1)
        bf16 = training_loss(model, x, Objective(), precision="bf16")[0]
    assert bf16.dtype == torch.float32  # the loss is kept in float32
    assert abs(bf16.item() - fp32.item()) / fp32.item() < 0.02


def test_bf16_falls_back_with_a_message_where_not_native(monkeypatch):
    messages = []
    monkeypatch.setattr(engine, "native_bf16", lambda device: False)
    assert engine.effective_precision(TrainConfig(precision="bf16"), torch.device("cpu"), messages.append) == "fp32"
    assert "no native bf16" in messages[0] and "fp32 instead" in messages[0]
    monkeypatch.setattr(engine, "native_bf16", lambda device: True)
    assert engine.effective_precision(TrainConfig(precision="bf16"), torch.device("cpu"), messages.append) == "bf16"


def test_compile_failure_falls_back_to_eager_with_the_same_loss(monkeypatch, capsys, tiny_data):
    def broken_compile(fn, **kw):
        def fails(*a, **k):
            raise RuntimeError("no C++ compiler found")
        return fails

    def one_step(compile_):
        torch.manual_seed(0)
        config = TrainConfig(compile=compile_, device="cpu")
        model = build_model("seed")
        optimizer = engine.make_optimizer(model, config, torch.device("cpu"))
        step = engine.make_train_step(model, optimizer, tiny_data.train_images, 255.0, config, torch.float32,
                                      "fp32", torch.device("cpu"))
        return [step(torch.arange(32) + 32 * k, 1e-3)[0].item() for k in range(2)]

    monkeypatch.setattr(torch, "compile", broken_compile)
    fallen_back = one_step(True)
    assert "--compile: torch.compile failed here (RuntimeError: no C++ compiler found); running eager" in capsys.readouterr().err
    assert fallen_back == one_step(False)


def test_fast_transposed_convs_give_the_plain_loss_and_gradients():
    """The matmul forms of the seed's layers 1 and 4 against nn.ConvTranspose2d, through the whole model."""
    import torch.nn as nn

    from convae.models.decoders import ConvTranspose2d

    torch.manual_seed(0)
    fast = build_model("seed").double()
    plain = build_model("seed").double()
    plain.load_state_dict(fast.state_dict())
    for module in plain.modules():
        if isinstance(module, ConvTranspose2d):
            module.forward = lambda x, output_size=None, m=module: nn.ConvTranspose2d.forward(m, x, output_size)
    x = torch.rand(8, 1, 32, 32, dtype=torch.float64)
    losses = []
    for model in (fast, plain):
        torch.manual_seed(3)
        loss, terms = training_loss(model, x, Objective(), precision="fp32")
        loss.backward()
        losses.append(terms)
    assert torch.allclose(losses[0], losses[1], rtol=1e-12)
    for a, b in zip(fast.parameters(), plain.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-9, atol=1e-12)


def test_bench_reports_every_field_and_skips_absent_devices(capsys):
    result = run_bench(BenchSettings(batch_sizes=(8,), devices=("cpu",), steps=2, rounds=2, warmup=1))
    row = result["rows"][0]
    assert row["device"] == "cpu" and row["batch"] == 8 and row["ms_per_step"] > 0
    assert row["img_per_s"] == pytest.approx(8 / row["ms_per_step"] * 1e3)
    assert row["train_flops_per_image"] == 6 * 11_822_896
    assert row["gflops"] == pytest.approx(row["img_per_s"] * row["train_flops_per_image"] / 1e9)
    assert 0 < row["share_of_peak"] < 2 and row["seed_epoch_seconds"] == pytest.approx(60000 / row["img_per_s"])
    table = format_table(result)
    assert "ms/step" in table and "warm-up" in table and "cpu" in table
    if not torch.cuda.is_available():
        assert main(["bench", "--device", "cuda"]) == 2
        assert "--device cuda: not available on this machine" in capsys.readouterr().err


def test_bench_takes_the_faster_peak_of_before_and_after_the_steps(monkeypatch):
    """A peak timed low (a shared machine's slow second) would make a share over 100 %: the peak is the best timing."""
    from convae.benchmarking import bench

    timings = iter([100.0, 250.0])  # before the steps, after them
    monkeypatch.setattr(bench, "matmul_peak_gflops", lambda device, precision: next(timings))
    monkeypatch.setattr(bench, "time_train_steps", lambda settings, device, batch, precision: {
        "device": device, "precision": precision, "batch": batch, "gflops": 125.0})
    result = run_bench(BenchSettings(batch_sizes=(8,), devices=("cpu",)))
    assert result["peaks_gflops"] == {"cpu/fp32": 250.0}
    assert result["rows"][0]["matmul_peak_gflops"] == 250.0 and result["rows"][0]["share_of_peak"] == 0.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_step_matches_eager_step_in_expectation(tiny_data):
    losses = {}
    for graphs in (False, True):
        torch.manual_seed(0)
        config = TrainConfig(device="cuda", cuda_graphs=graphs)
        device = torch.device("cuda")
        model = build_model("seed").to(device)
        optimizer = engine.make_optimizer(model, config, device, capturable=graphs)
        images = tiny_data.train_images.to(device)
        step = engine.make_train_step(model, optimizer, images, 255.0, config, torch.float32, "fp32", device)
        losses[graphs] = [step(torch.arange(32, device=device) + 32 * (k % 8), 1e-3)[0].item() for k in range(40)]
    assert abs(sum(losses[True][-8:]) - sum(losses[False][-8:])) / sum(losses[False][-8:]) < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("objective", [dict(kl_warmup=30, free_bits=0.05), dict(iw_train=3, beta=0.5)])
def test_cuda_graph_step_follows_the_kl_weight_and_matches_eager(tiny_data, objective):
    """The KL weight is an input of the recorded graph: a graphed run must see it change, as the eager run does."""
    losses = {}
    for graphs in (False, True):
        torch.manual_seed(0)
        config = TrainConfig(model="resize", device="cuda", cuda_graphs=graphs, **objective)
        device = torch.device("cuda")
        model = build_model("resize").to(device)
        optimizer = engine.make_optimizer(model, config, device, capturable=graphs)
        images = tiny_data.train_images.to(device)
        step = engine.make_train_step(model, optimizer, images, 255.0, config, torch.float32, "fp32", device)
        losses[graphs] = [step(torch.arange(32, device=device) + 32 * (k % 8), 1e-3, k)[0].item() for k in range(40)]
        assert step.kl_weight.item() == config.beta * min(1.0, 39 / config.kl_warmup if config.kl_warmup else 1.0)
    assert abs(sum(losses[True][-8:]) - sum(losses[False][-8:])) / sum(losses[False][-8:]) < 0.05
