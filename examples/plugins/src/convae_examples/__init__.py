"""Example convae plug-ins, each a module that imports only convae's public API (docs/own-model.md):

- ``nnup``: a decoder of nearest-neighbour upsampling and 3x3 convolutions with convae's MLP encoder;
- ``vamp``: the VampPrior (Tomczak & Welling 2018), a mixture of the posteriors of learned pseudo-inputs;
- ``planar``: a posterior of planar-flow steps on the Gaussian (Rezende & Mohamed 2015);
- ``ppca``: probabilistic PCA, a linear-Gaussian model whose log p(x) is known exactly (the bounds' check).
"""

__version__ = "0.1.0"
