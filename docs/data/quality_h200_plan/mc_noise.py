"""Per-image Monte Carlo spread of a one-sample -ELBO: what the difference of two devices' test -ELBO can be."""
import sys, torch
from convae.evaluation.runs import open_run
from convae.evaluation.likelihood import log_weights
run = open_run(sys.argv[1], device="cpu")
test = run.test_set(run.data(1000))
g = torch.Generator().manual_seed(1)
with torch.no_grad():
    w = torch.cat([log_weights(run.model, test.floats(i, i + 100, torch.float32, torch.device("cpu")), 16, g)
                   for i in range(0, 1000, 100)])
var = w.var(dim=1, unbiased=True).mean().item()
se = (var / 10000) ** 0.5
print(f"{sys.argv[1]}: mean per-image variance of one sample {var:.2f}; se of a 10,000-image mean {se:.4f}; "
      f"se of the difference of two independent ones {se * 2 ** 0.5:.4f}")
