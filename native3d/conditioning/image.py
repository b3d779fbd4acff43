"""Image encoders for image-to-3D conditioning, and reading the conditioning image.

Two encoders give the same `Cond` dict ("tokens" (B, L, C), "mask" (B, L), "pooled" (B, C)):

- `HFImageEncoder`: a frozen pretrained vision tower, CLIP (Radford et al. 2021) or DINOv2
  (Oquab et al. 2023), whose patch tokens image-to-3D models such as CLAY (Zhang et al. 2024)
  and TRELLIS (Xiang et al. 2024) cross-attend to.
- `ViewEncoder`: the offline default, a small ViT (Dosovitskiy et al. 2021: patchify, learned
  position embeddings, pre-norm transformer blocks) trained jointly with the denoiser on the
  shards' rendered views.

A conditioning image is an image file (PNG/JPEG, transparency composited on white, the render
background) or the first fixed-camera view rendered from a mesh file.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float, UInt8
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn

from native3d.errors import InputError
from native3d.geometry.mesh import MESH_EXTENSIONS, MeshError, load_mesh, normalize
from native3d.geometry.render import fixed_cameras, render_views
from native3d.nn.attention import TransformerBlock
from native3d.nn.modulation import Cond

CLIP_VISION_TYPES = ("clip", "clip_vision_model")
Images = UInt8[Tensor, "B H W 3"] | Float[Tensor, "B H W 3"] | Float[Tensor, "B 3 H W"]


class HFImageEncoder(nn.Module):
    """A frozen Hugging Face vision tower (CLIP vision or DINOv2, or any AutoModel ViT).

    Tokens are the final hidden states (class token first, then patches); pooled is the model's
    pooler output (CLIP: the post-layernormed class token; DINOv2: the layernormed class token).
    Resizing, cropping and normalization are the model's own image processor's.
    """

    is_frozen = True

    def __init__(
        self,
        name_or_path: str,
        device: str | torch.device | None = None,
        local_files_only: bool = False,
    ) -> None:
        super().__init__()
        self.name_or_path = name_or_path
        local = local_files_only or os.path.isdir(name_or_path)
        # Imported here: transformers takes seconds to import and the ViewEncoder never needs it.
        from transformers import AutoConfig, AutoImageProcessor, AutoModel, CLIPVisionModel

        try:
            config = AutoConfig.from_pretrained(name_or_path, local_files_only=local)
            # AutoModel would build the whole CLIP from a CLIP checkpoint; take the vision tower.
            loader = CLIPVisionModel if config.model_type in CLIP_VISION_TYPES else AutoModel
            self.model = loader.from_pretrained(name_or_path, local_files_only=local)
            self.processor = AutoImageProcessor.from_pretrained(name_or_path, local_files_only=local)
        except (OSError, ValueError, KeyError) as error:
            raise OSError(f"could not load an image encoder from {name_or_path!r}: {error}") from error
        self.dim: int = self.model.config.hidden_size
        self.model.eval().requires_grad_(False)
        if device is not None:
            self.to(device)

    def train(self, mode: bool = True) -> HFImageEncoder:
        # Frozen: a parent's .train() must not switch dropout on in the pretrained encoder.
        return super().train(False)

    @torch.no_grad()
    def encode(self, images: UInt8[Tensor, "B H W 3"] | np.ndarray | list[Image.Image]) -> Cond:
        """{"tokens": (B, L, C), "mask": (B, L) all True, "pooled": (B, C)}, float32."""
        if isinstance(images, Tensor):
            images = images.cpu().numpy()
        if isinstance(images, np.ndarray):
            images = list(images)  # B arrays (H, W, 3) uint8, what processors take
        param = next(self.model.parameters())
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        out = self.model(pixel_values=pixels.to(param.device, param.dtype))
        tokens = out.last_hidden_state.float()  # (B, L, C)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return {"tokens": tokens, "mask": mask, "pooled": out.pooler_output.float()}

    def forward(self, images: UInt8[Tensor, "B H W 3"] | list[Image.Image]) -> Cond:
        return self.encode(images)

    def cache_key(self) -> str:
        name = os.path.basename(self.name_or_path.rstrip("/"))
        checksum = sum(float(p.double().sum()) for p in self.model.parameters())
        return f"{type(self).__name__}:{name}:{checksum:.6e}"


class ViewEncoder(nn.Module):
    """A small ViT over the conditioning view, trained with the denoiser (not frozen).

    Images are resized to `image_size` and mapped to [-1, 1] inside, so it takes the shards'
    uint8 views directly. Tokens are the (image_size / patch)^2 normalized patch tokens; pooled
    is their mean.
    """

    is_frozen = False

    def __init__(
        self, dim: int, image_size: int = 64, patch: int = 8, depth: int = 2, heads: int = 4
    ) -> None:
        super().__init__()
        if image_size % patch != 0:
            raise ValueError(f"image_size={image_size} is not divisible by patch={patch}")
        self.dim = dim
        self.image_size = image_size
        self.patchify = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.pos = nn.Parameter(torch.zeros(1, (image_size // patch) ** 2, dim))
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        nn.init.trunc_normal_(self.pos, std=0.02)  # ViT's init for learned position embeddings

    def forward(self, images: Images) -> Cond:
        x = self.patchify(self.preprocess(images))  # (B, C, h, w)
        x = rearrange(x, "B C h w -> B (h w) C") + self.pos  # (B, L, C)
        for block in self.blocks:
            x = block(x)
        tokens = self.norm(x)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return {"tokens": tokens, "mask": mask, "pooled": tokens.mean(dim=1)}

    def encode(self, images: Images) -> Cond:
        return self(images)

    def preprocess(self, images: Images) -> Float[Tensor, "B 3 S S"]:
        """uint8 [0, 255] or float [0, 1], channels last or first -> float [-1, 1] (B, 3, S, S)."""
        if images.ndim != 4 or 3 not in (images.shape[1], images.shape[-1]):
            raise ValueError(f"expected images (B, H, W, 3) or (B, 3, H, W), got {tuple(images.shape)}")
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        if images.shape[-1] == 3:  # the shard layout (B, H, W, 3) wins when both axes are 3
            x = rearrange(x, "B H W C -> B C H W")
        x = x.to(self.pos.device)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        return x * 2.0 - 1.0

    def cache_key(self) -> None:
        """Trained jointly with the denoiser, so its embeddings change every step: never cached."""
        return None


def view_encoder_tiny(dim: int = 64) -> ViewEncoder:
    return ViewEncoder(dim=dim, image_size=32, patch=8, depth=1, heads=4)


def view_encoder_small(dim: int = 256) -> ViewEncoder:
    return ViewEncoder(dim=dim, image_size=64, patch=8, depth=4, heads=8)


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """An image file as (size, size, 3) uint8 RGB; transparency is composited on white.

    Non-square images are padded with white to a square first, so the object keeps its aspect
    ratio, as the renders in the shards do.
    """
    path = os.fspath(path)
    try:
        with Image.open(path) as opened:
            opened.load()  # decode now, so a truncated file fails here and not later
            image = _composite_on_white(opened)
    except (FileNotFoundError, IsADirectoryError) as error:
        raise InputError(f"{path}: no such image file") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:  # PIL's decode errors
        raise InputError(f"{path}: not a readable image ({type(error).__name__}: {error})") from error
    side = max(image.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return np.asarray(square.resize((size, size), Image.Resampling.LANCZOS), dtype=np.uint8)


def _composite_on_white(image: Image.Image) -> Image.Image:
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    if not has_alpha:
        return image.convert("RGB")
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def render_image_of_mesh(path: str | os.PathLike, size: int) -> np.ndarray:
    """The first fixed-camera view of a normalized mesh file, (size, size, 3) uint8.

    The camera is the first of `fixed_cameras`, the same for any view count, so this is the
    view a model conditioned on shard view 0 was trained on. An unusable mesh is an `InputError`.
    """
    try:
        mesh, _ = normalize(load_mesh(path))
    except MeshError as error:
        raise InputError(f"{path}: not a usable mesh to render ({error})") from error
    return render_views(mesh, fixed_cameras(1), size)[0]


def image_from_path(path: str | os.PathLike, size: int) -> np.ndarray:
    """A conditioning image from a file: rendered if it is a mesh, read if it is an image."""
    if os.fspath(path).lower().endswith(MESH_EXTENSIONS):
        return render_image_of_mesh(path, size)
    return load_image(path, size)


__all__ = [
    "HFImageEncoder",
    "ViewEncoder",
    "image_from_path",
    "load_image",
    "render_image_of_mesh",
    "view_encoder_small",
    "view_encoder_tiny",
]
