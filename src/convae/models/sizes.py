"""The image sizes the convolutional encoders and decoders take: from 32 x 32 (the seed's) up to 256 x 256, each
doubling one more stride-2 stage between 4 x 4 and the image."""

CONV_SIZES = (32, 64, 128, 256)


def sizes_said() -> str:
    """"32x32, 64x64, 128x128 or 256x256", for messages."""
    return ", ".join(f"{s}x{s}" for s in CONV_SIZES[:-1]) + f" or {CONV_SIZES[-1]}x{CONV_SIZES[-1]}"


def stages(image_size: int) -> int:
    """Stride-2 stages between 4 x 4 and the image: 3 at 32, 4 at 64, 5 at 128, 6 at 256."""
    return image_size.bit_length() - 3
