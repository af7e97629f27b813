"""The seed model written the way most PyTorch users would write it: the yardstick convae is measured against.

TensorDataset + DataLoader(shuffle=True), float32, sigmoid outputs with F.binary_cross_entropy (PyTorch clamps
its logs at -100), Adam 1e-3, batch 32, the data pre-resized to 32x32 in memory. No convae code is used, so
improvements to convae cannot leak into the baseline.

    python benchmarks/baseline_seed.py --epochs 10            # train and report test -ELBO per epoch
    python benchmarks/baseline_seed.py --steps 300 --json      # time steps only
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import io
import json
import pickle
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(1024, 500), nn.Linear(500, 500), nn.Linear(500, 200)
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        h = self.drop(F.elu(self.fc1(x.view(-1, 1024))))
        h = self.drop(torch.tanh(self.fc2(h)))
        h = self.fc3(h)
        return h[:, :100], 1e-6 + F.softplus(h[:, 100:])


class Generator(nn.Module):
    def __init__(self):
        super().__init__()
        self.ct1 = nn.ConvTranspose2d(100, 256, 4, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(256)
        self.ct2 = nn.ConvTranspose2d(256, 128, 4, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(128)
        self.ct3 = nn.ConvTranspose2d(128, 64, 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(64)
        self.ct4 = nn.ConvTranspose2d(64, 1, 4, 4, bias=False)
        self.bn4 = nn.BatchNorm2d(1)

    def forward(self, z):
        h = F.relu(self.bn1(self.ct1(z.view(-1, 100, 1, 1))))
        h = F.relu(self.bn2(self.ct2(h)[:, :, :4, :4]))
        h = F.relu(self.bn3(F.pad(self.ct3(h), (0, 1, 0, 1))))
        return torch.sigmoid(self.bn4(self.ct4(h)))


class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder, self.decoder = Encoder(), Generator()

    def forward(self, x):
        mu, sigma = self.encoder(x)
        z = mu + sigma * torch.randn_like(mu)
        return self.decoder(z), mu, sigma


def loss_function(y, x, mu, sigma):
    likelihood = F.binary_cross_entropy(y.view(-1, 1024), x.view(-1, 1024), reduction="sum") / len(x)
    kl = 0.5 * torch.sum(mu ** 2 + sigma ** 2 - torch.log(1e-8 + sigma ** 2) - 1) / len(x)
    return likelihood + kl


def load_mnist_32():
    """The embedded MNIST, resized to 32x32 floats (plain pickle.load: this is a benchmark, not the product)."""
    spec = importlib.util.find_spec("mnist")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "mnist.pkl.gz"
    with gzip.open(path) as f:
        (xa, _), (xb, _), (xt, _) = pickle.load(io.BytesIO(f.read()), encoding="latin1")
    resize = lambda a: F.interpolate(torch.from_numpy(a).view(-1, 1, 28, 28), size=32, mode="bilinear",  # noqa: E731
                                     align_corners=False)
    return resize(np.concatenate([xa, xb])), resize(xt)


def test_neg_elbo(model, test_x):
    model.eval()
    total = 0.0
    with torch.no_grad():
        for x in test_x.split(500):
            y, mu, sigma = model(x)
            total += loss_function(y, x, mu, sigma).item() * len(x)
    model.train()
    return total / len(test_x)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--steps", type=int, help="time this many steps (after 20 warm-up steps) and stop")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    train_x, test_x = load_mnist_32()
    model = VAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(TensorDataset(train_x), batch_size=32, shuffle=True, drop_last=True)
    history, started, trained, steps = [], time.perf_counter(), 0.0, 0
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        for (x,) in loader:
            if args.steps is not None and steps == 20:
                t0 = time.perf_counter()  # warm-up over
            y, mu, sigma = model(x)
            loss = loss_function(y, x, mu, sigma)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            if args.steps is not None and steps == args.steps + 20:
                seconds = time.perf_counter() - t0
                result = {"what": "baseline seed port, train steps", "steps": args.steps, "batch": 32,
                          "seconds": seconds, "img_per_s": args.steps * 32 / seconds, "warmup_steps": 20}
                print(json.dumps(result) if args.json else result)
                return
        trained += time.perf_counter() - t0
        record = {"epoch": epoch, "test_neg_elbo": test_neg_elbo(model, test_x), "train_seconds": trained,
                  "wall_seconds": time.perf_counter() - started}
        history.append(record)
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
