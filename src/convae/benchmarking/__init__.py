"""Measuring speed: FLOP counts from the layers, and ``convae bench``."""
