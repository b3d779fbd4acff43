"""Meshes decoded from latents during training, as point samples for metrics and a PNG sheet."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image
from torch import Tensor

from native3d.autoencoders.bottleneck import LatentAutoencoder
from native3d.autoencoders.meshing import decode_mesh
from native3d.files import atomic_path
from native3d.geometry.marching_cubes import NoSurfaceError
from native3d.geometry.render import fixed_cameras, render_views

log = logging.getLogger(__name__)


@dataclass
class Previews:
    meshes: list[trimesh.Trimesh | None]  # None where the latent decodes to no surface

    @property
    def points(self) -> list[np.ndarray | None]:
        """2,048 area-weighted surface points per mesh (fixed seed), float32."""
        return [None if m is None else sample_points(m, 2048) for m in self.meshes]

    def save_png(self, path: Path, size: int = 192) -> None:
        camera = fixed_cameras(1)
        blank = np.full((size, size, 3), 255, dtype=np.uint8)
        tiles = [blank if m is None else render_views(m, camera, size)[0] for m in self.meshes]
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Image.fromarray(np.concatenate(tiles, axis=1)).save(tmp, format="PNG")


def sample_points(mesh: trimesh.Trimesh, count: int) -> np.ndarray:
    points, _ = trimesh.sample.sample_surface(mesh, count, seed=0)
    return points.astype(np.float32)


def decode_previews(autoencoder: LatentAutoencoder, latents: Tensor, resolution: int) -> Previews:
    meshes = []
    for latent in latents:
        try:
            vertices, faces = decode_mesh(autoencoder, latent[None], resolution)
            meshes.append(trimesh.Trimesh(vertices, faces, process=False))
        except NoSurfaceError as error:
            log.info("preview latent decodes to no surface: %s", error)
            meshes.append(None)
    return Previews(meshes)
