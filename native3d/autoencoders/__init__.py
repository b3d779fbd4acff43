"""Autoencoders from an input representation to a latent, decoded as an implicit SDF.

All three follow `LatentAutoencoder` (see `bottleneck.py`): `inputs_from_batch`, `encode` ->
`DiagonalGaussian`, `decode(latent, points)` -> sdf, `latent_shape`, and the latent mean/std
buffers that travel in the checkpoint.
"""

from native3d.autoencoders.bottleneck import DiagonalGaussian, LatentAutoencoder, latent_statistics
from native3d.autoencoders.grid import GridVAE, grid_base, grid_tiny
from native3d.autoencoders.loss import autoencoder_loss
from native3d.autoencoders.triplane import TriplaneVAE, triplane_base, triplane_tiny
from native3d.autoencoders.vecset import VecSetVAE, farthest_point_sample, vecset_base, vecset_tiny

__all__ = [
    "DiagonalGaussian",
    "GridVAE",
    "LatentAutoencoder",
    "TriplaneVAE",
    "VecSetVAE",
    "autoencoder_loss",
    "farthest_point_sample",
    "grid_base",
    "grid_tiny",
    "latent_statistics",
    "triplane_base",
    "triplane_tiny",
    "vecset_base",
    "vecset_tiny",
]
