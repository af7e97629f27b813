"""Image data: the sources (one module each), the uint8 container, preparation, the cache, streaming.

``load_data(source)`` returns an ``ImageData`` of uint8 N x C x H x W tensors; ``to_float`` turns a batch of them
into the values a model sees.
"""

from .idx import IDX_FILES, read_idx, read_idx_folder, write_idx
from .images import EvalImages, ImageData, evaluation_images, fixed_binarization, to_float
from .mnist import embedded_mnist_path, read_mnist_pickle
from .sources import SOURCES, cache_for, cache_root, load_data, load_for_config, shapes_factors, source_kind
from .streaming import StreamedImages, resident_limit

__all__ = ["cache_for", "cache_root", "EvalImages", "evaluation_images", "IDX_FILES", "ImageData", "SOURCES", "embedded_mnist_path", "fixed_binarization", "load_data",
           "load_for_config", "read_idx", "read_idx_folder", "read_mnist_pickle", "resident_limit", "shapes_factors",
           "source_kind", "StreamedImages", "to_float",
           "write_idx"]
