"""native3d: training 3D-native latent diffusion models.

Dimension letters used in shape annotations (jaxtyping) and einops patterns everywhere:

    B batch            N surface points      Q query points       M latent tokens
    C channels         R grid resolution     D, H, W grid axes    P the three planes
    V views            L condition tokens    T diffusion time steps
"""

__version__ = "0.1.0"
