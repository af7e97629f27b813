"""convae: convolutional variational autoencoders on images, starting from the ADCME.jl seed tutorial."""

__version__ = "0.1.0"
