"""A generated data set with known factors: one coloured shape per image on a dark background.

Factors, drawn from seeded uniform ranges and kept beside the images (``factors``, N x 6): kind (0 circle,
1 square, 2 triangle; also the label), hue, size, rotation, x and y of the centre. Drawn at twice the size and
averaged 2 x 2, so edges are antialiased. ``shapes`` = 100,000 training and 10,000 test images; ``shapes:N`` =
N and N / 10.
"""

from __future__ import annotations

import colorsys

import numpy as np

FACTORS = ("kind", "hue", "size", "rotation", "x", "y")
KINDS = ("circle", "square", "triangle")
RANGES = {"size": (0.12, 0.28), "x": (0.3, 0.7), "y": (0.3, 0.7)}
BACKGROUND = 0.08


def draw_factors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, len(KINDS), n).astype(np.float64), rng.random(n),
                     rng.uniform(*RANGES["size"], n), rng.uniform(0, 2 * np.pi, n),
                     rng.uniform(*RANGES["x"], n), rng.uniform(*RANGES["y"], n)], 1)


def render(factors: np.ndarray, size: int) -> np.ndarray:
    """uint8 N x 3 x size x size images of the shapes ``factors`` describe."""
    fine = 2 * size
    v, u = (np.mgrid[0:fine, 0:fine] + 0.5) / fine
    kind, hue, s, theta, cx, cy = (factors[:, k, None, None] for k in range(6))
    dx, dy = u - cx, v - cy
    rx = np.cos(theta) * dx + np.sin(theta) * dy
    ry = -np.sin(theta) * dx + np.cos(theta) * dy
    circle = rx ** 2 + ry ** 2 <= s ** 2
    square = (np.abs(rx) <= 0.8 * s) & (np.abs(ry) <= 0.8 * s)
    triangle = np.ones_like(circle)
    for k in range(3):  # inside the three edges of an equilateral triangle of circumradius s
        angle = np.pi / 2 + 2 * np.pi * k / 3
        triangle &= rx * np.cos(angle) + ry * np.sin(angle) <= s / 2
    mask = np.where(kind == 0, circle, np.where(kind == 1, square, triangle)).astype(np.float32)
    mask = mask.reshape(len(factors), size, 2, size, 2).mean((2, 4))
    colour = np.array([colorsys.hsv_to_rgb(h, 0.8, 0.95) for h in factors[:, 1]], dtype=np.float32)
    images = BACKGROUND + mask[:, None] * (colour[:, :, None, None] - BACKGROUND)
    return np.rint(images * 255).astype(np.uint8)


def parse_count(source: str) -> int:
    """``shapes`` -> 100,000; ``shapes:N`` -> N training images."""
    if source == "shapes":
        return 100_000
    count = source.split(":", 1)[1]
    if not count.isdigit() or int(count) < 10:
        raise ValueError(f"--data {source}: expected shapes or shapes:N with N >= 10 training images")
    return int(count)
