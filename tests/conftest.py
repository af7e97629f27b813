import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from convae.data import ImageData, write_idx


def blob_images(n: int, seed: int) -> np.ndarray:
    """n x 28 x 28 uint8 images of one or two soft blobs: cheap stand-ins for digits, learnable in a few steps."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28]
    images = np.zeros((n, 28, 28))
    for k in range(2):
        cy, cx = rng.uniform(8, 20, (2, n, 1, 1))
        r = rng.uniform(2.5, 5, (n, 1, 1))
        images += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r ** 2)) * (rng.random((n, 1, 1)) < 0.8 - 0.4 * k)
    return np.clip(images * 255, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def tiny_data() -> ImageData:
    train, test = blob_images(256, 0), blob_images(64, 1)
    as_t = lambda a: torch.from_numpy(a).view(-1, 1, 28, 28)  # noqa: E731
    return ImageData("blobs", as_t(train), torch.zeros(256, dtype=torch.long), as_t(test),
                     torch.zeros(64, dtype=torch.long), levels=255.0)


def idx_folder(folder, data: ImageData, n_train: int | None = None, n_test: int | None = None,
               gzipped: tuple[str, ...] = ()):
    """The four IDX files of (the first images of) ``data`` in a new ``folder``; the names in ``gzipped`` get .gz."""
    folder.mkdir()
    arrays = {"train-images-idx3-ubyte": data.train_images[:n_train, 0], "train-labels-idx1-ubyte":
              data.train_labels[:n_train], "t10k-images-idx3-ubyte": data.test_images[:n_test, 0],
              "t10k-labels-idx1-ubyte": data.test_labels[:n_test]}
    for name, array in arrays.items():
        write_idx(folder / (name + (".gz" if name in gzipped else "")), array.numpy().astype("uint8"))
    return folder


@pytest.fixture(scope="session")
def seed_run(tmp_path_factory, tiny_data):
    """The seed's model trained 6 epochs on ``tiny_data`` (read from IDX files, as a user's run would), once per
    session, for the tests that only read a trained run (or write its eval/ outputs); a test that damages a run
    copies it first."""
    from convae.config import TrainConfig
    from convae.training import train

    folder = tmp_path_factory.mktemp("seed-run")
    config = TrainConfig(epochs=6, batch_size=32, lr=3e-3, quiet=True, device="cpu", out=str(folder / "run"),
                         eval_batch_size=64, report=False, data_dir=str(idx_folder(folder / "idx", tiny_data)))
    train(config, log=lambda s: None)
    return folder / "run"


@pytest.fixture()
def idx_dir(tmp_path, tiny_data):
    return idx_folder(tmp_path / "idx", tiny_data, gzipped=("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))


def sigterm_at(step: int):
    """Hooks under which training sends itself SIGTERM as it starts step ``step`` (0-based)."""
    import os
    import signal

    from convae.training import Hooks

    def before_step(k: int) -> None:
        if k == step:
            os.kill(os.getpid(), signal.SIGTERM)

    return Hooks(before_step=before_step)


def run_cli(capsys, *argv, hooks=None):
    """``convae argv`` in this process: (exit code, stdout, stderr)."""
    from convae.cli import main

    try:
        code = main(list(argv), hooks=hooks)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def postgres(tmp_path):
    """A PostgreSQL server of its own in a temporary folder (Debian's postgresql: initdb, pg_ctl), on a free local
    port, run as the postgres user where the tests run as root; stopped afterwards."""
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed (pip install psycopg2-binary)")
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not bins:
        pytest.skip("no PostgreSQL server here (Debian: apt-get install postgresql)")
    bin_dir = bins[-1].parent
    home = Path(tempfile.mkdtemp(prefix="convae-pg-"))  # pytest's own folders are closed to other users
    data = home / "pg"
    data.mkdir()
    as_user = []
    if os.geteuid() == 0:  # the server refuses to run as root
        home.chmod(0o755)
        shutil.chown(data, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "convae"], check=True,
                   capture_output=True, timeout=120)
    subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l", str(data / "log"), "-o",
                    f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True,
                   timeout=120)
    try:
        subprocess.run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "convae", "study"],
                       check=True, capture_output=True, timeout=60)
        yield f"postgresql+psycopg2://convae@127.0.0.1:{port}/study"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(home, ignore_errors=True)
