"""Condition encoders: captions and images -> the `Cond` dict of `native3d.nn.modulation`.

Text: `HFTextEncoder` (frozen; the packaged all-MiniLM-L6-v2 by default, or CLIP / any Hugging
Face encoder). Images: `ViewEncoder` (a small ViT trained with the denoiser, the offline default)
or `HFImageEncoder` (frozen CLIP vision / DINOv2). `TextConditioner` and `ImageConditioner` turn a
batch into a cond. Condition dropout and guidance are in `native3d.diffusion.guidance`.
"""

from native3d.conditioning.condition import Conditioner, ImageConditioner, TextConditioner
from native3d.conditioning.image import (
    HFImageEncoder,
    ViewEncoder,
    image_from_path,
    load_image,
    render_image_of_mesh,
    view_encoder_small,
    view_encoder_tiny,
)
from native3d.conditioning.text import HFTextEncoder, default_text_encoder_path, masked_mean

__all__ = [
    "Conditioner",
    "HFImageEncoder",
    "HFTextEncoder",
    "ImageConditioner",
    "TextConditioner",
    "ViewEncoder",
    "default_text_encoder_path",
    "image_from_path",
    "load_image",
    "masked_mean",
    "render_image_of_mesh",
    "view_encoder_small",
    "view_encoder_tiny",
]
