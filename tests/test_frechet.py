import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convae.config import TrainConfig
from convae.data import load_for_config
from convae.data import EvalImages, evaluation_images
from convae.evaluation.frechet import cached_classifier, frechet_distance, train_classifier


def test_frechet_distance_of_one_dimensional_gaussians_is_the_closed_form():
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.normal(1.0, 2.0, (4000, 1)))
    b = torch.from_numpy(rng.normal(-0.5, 0.5, (3000, 1)))
    expected = (a.mean() - b.mean()) ** 2 + (a.std() - b.std()) ** 2  # (m1 - m2)^2 + (s1 - s2)^2, unbiased std
    assert frechet_distance(a, b) == pytest.approx(expected.item(), rel=1e-9)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_is_invariant_to_a_rotation_of_both_sets():
    rng = np.random.default_rng(1)
    a = torch.from_numpy(rng.normal(size=(2000, 5)) @ rng.normal(size=(5, 5)))
    b = torch.from_numpy(rng.normal(size=(2000, 5)) + 0.3)
    q, _ = torch.linalg.qr(torch.from_numpy(rng.normal(size=(5, 5))))
    assert frechet_distance(a @ q, b @ q) == pytest.approx(frechet_distance(a, b), rel=1e-8)


@pytest.fixture(scope="module")
def mnist_classifier():
    """A classifier trained briefly on 6,000 MNIST digits: enough for the features to tell real from damaged."""
    config = TrainConfig()
    data = load_for_config(config).subset(6000, 2000)
    train = EvalImages(data.train_images, data.levels, 32, config.resize_mode)
    test = evaluation_images(data.test_images, data.levels, config)
    model, accuracy = train_classifier(train, data.train_labels, test, data.test_labels, epochs=1)
    return model, accuracy, test


def test_the_distance_rises_with_blur_and_with_noise(mnist_classifier):
    model, accuracy, test = mnist_classifier
    assert accuracy > 0.8  # one short epoch: enough features to tell damage apart
    real = test.floats(0, 1000, torch.float32, torch.device("cpu"))
    other = test.floats(1000, 2000, torch.float32, torch.device("cpu"))
    features = model.features(real)

    def distance(images):
        return frechet_distance(model.features(images), features)

    floor = distance(other)
    blurred = [distance(F.avg_pool2d(other, k, stride=1, padding=k // 2, count_include_pad=False)) for k in (3, 5, 7)]
    generator = torch.Generator().manual_seed(0)
    noisy = [distance((other + s * torch.randn(other.shape, generator=generator)).clamp(0, 1)) for s in (0.1, 0.3, 0.6)]
    assert floor < blurred[0] < blurred[1] < blurred[2]
    assert floor < noisy[0] < noisy[1] < noisy[2]


def test_the_classifier_is_trained_once_and_cached_with_its_accuracy(tmp_path, tiny_data):
    config = TrainConfig()
    train = EvalImages(tiny_data.train_images, tiny_data.levels, 32, config.resize_mode)
    test = evaluation_images(tiny_data.test_images, tiny_data.levels, config)
    first = cached_classifier(tmp_path, train, tiny_data.train_labels, test, tiny_data.test_labels)
    second = cached_classifier(tmp_path, train, tiny_data.train_labels, test, tiny_data.test_labels)
    assert first.trained_now and not second.trained_now and first.path == second.path
    assert second.accuracy == first.accuracy
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a.cpu(), b.cpu())
