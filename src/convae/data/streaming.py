"""Training images larger than the device can hold: they stay in the memory-mapped cache, and each batch is
gathered there and copied to the device, the next one prepared by a background thread while the current step
runs (into pinned memory, copied without blocking, on CUDA).

The batches are the resident path's, value for value: same order, same indices, same bytes, so a streamed run
gives the same metrics as a resident one (bit for bit on CPU, which ``tests/test_sources.py`` checks).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import torch


def resident_limit(device: torch.device, configured: int | None) -> int:
    """How many bytes of training images may live on ``device``: ``--resident-max-bytes``, else half of what the
    GPU has free, else (CPU) half the machine's memory."""
    if configured is not None:
        return configured
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] // 2
    import os

    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return 4 << 30


class StreamedImages:
    """``images[index]`` on the device, read from a CPU (memory-mapped) uint8 tensor; ``prefetch(index)`` starts
    reading the next batch in the background."""

    def __init__(self, images: torch.Tensor, device: torch.device):
        self.images, self.device = images, device
        self.pin = device.type == "cuda"
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="convae-prefetch")
        self.pending: tuple[torch.Tensor, Future] | None = None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self):
        return self.images.shape

    def _read(self, index: torch.Tensor) -> torch.Tensor:
        batch = self.images[index]
        if self.pin:
            batch = batch.pin_memory()
        return batch.to(self.device, non_blocking=True)

    def prefetch(self, index: torch.Tensor) -> None:
        index = index.cpu()
        self.pending = (index, self.pool.submit(self._read, index))

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        index = index.cpu()
        if self.pending is not None and torch.equal(self.pending[0], index):
            batch = self.pending[1].result()
            self.pending = None
            return batch
        return self._read(index)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
