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


@pytest.fixture()
def idx_dir(tmp_path, tiny_data):
    return idx_folder(tmp_path / "idx", tiny_data, gzipped=("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))


@pytest.fixture()
def sigterm_at_step(monkeypatch):
    """``sigterm_at_step(k)``: training sends itself SIGTERM as it starts step k (0-based); ``.undo()`` stops it."""
    import os
    import signal

    import convae.training.loop as loop

    original = loop.learning_rate

    class Arm:
        def __call__(self, k):
            def learning_rate(config, step, total):
                if step == k:
                    os.kill(os.getpid(), signal.SIGTERM)
                return original(config, step, total)

            monkeypatch.setattr(loop, "learning_rate", learning_rate)

        def undo(self):
            monkeypatch.setattr(loop, "learning_rate", original)

    return Arm()
