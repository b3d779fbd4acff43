"""The shard schema: keys, dtypes, shapes and conventions, in one place.

Every writer (data_prep) and reader (native3d.data.shards) goes through this module.
Conventions used everywhere, marching cubes included:

- Coordinates: meshes are normalized into [-0.9, 0.9]^3 (longest side spans it, centred);
  grids cover [-1, 1]^3.
- Grid convention: CORNER. Sample i of R along an axis sits at x_i = -1 + 2 i / (R - 1), so the
  grid's outer samples lie on the cube's faces. Arrays are indexed [x, y, z] (indexing="ij"),
  which matches `torch.nn.functional.grid_sample(..., align_corners=True)` after the usual
  (z, y, x) axis flip, and PyMCubes' vertex indices map back with the same formula.
- Signed distance is negative inside and truncated to [-truncation, truncation] in every stored
  array (`sdf.npy`, `query.npy`, triplane channel 0).
- Sharp-edge points (`sharp.npy`, schema 2): points on the edges whose two faces' normals differ by
  more than `Sizes.sharp_angle` degrees, with the unit bisector of those normals
  (`native3d.geometry.sampling.sample_sharp`). A set built with `sharp_points=0`, and every
  schema-1 set, has no `sharp.npy`.
- Triplane planes are ordered (xy, xz, yz); the plane named `ab` is indexed [a, b] and reduces the
  grid along the remaining axis. Channels: 0 = the minimum SDF along that axis, 1 = the fraction
  of samples along that axis that are inside (sdf < 0).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

import numpy as np

from native3d.errors import InputError

SCHEMA_VERSION = 2  # 2 added sharp.npy
READABLE_SCHEMA_VERSIONS = (1, 2)  # a schema-1 set reads as one with sharp_points=0

NORMALIZED_HALF_EXTENT = 0.9  # longest bounding-box side spans [-0.9, 0.9]
TRIPLANE_PLANES = ("xy", "xz", "yz")
TRIPLANE_CHANNELS = ("min_sdf", "inside_fraction")


@dataclass(frozen=True)
class Sizes:
    """The sizes of one shard set; recorded in every `index.json` and build manifest."""

    surface_points: int = 8192  # N
    grid_resolution: int = 64  # R (also the triplane resolution)
    query_points: int = 16384  # Q: half uniform in the cube, a quarter at each near-surface scale
    views: int = 4  # V
    view_size: int = 128  # H = W
    truncation: float = 0.1  # |sdf| is clamped to this, in normalized units
    near_surface_sigmas: tuple[float, float] = (0.01, 0.04)
    sharp_points: int = 2048  # S: points on sharp edges; 0 writes no sharp.npy
    sharp_angle: float = 15.0  # degrees between adjacent face normals above which an edge is sharp

    def __post_init__(self) -> None:
        for name in ("surface_points", "grid_resolution", "query_points", "view_size"):
            if getattr(self, name) < 1:
                raise InputError(f"Sizes.{name} must be positive, got {getattr(self, name)}")
        if self.views < 0:
            raise InputError(f"Sizes.views must be >= 0, got {self.views}")
        if self.grid_resolution < 2:
            raise InputError("Sizes.grid_resolution must be at least 2")
        if self.truncation <= 0:
            raise InputError("Sizes.truncation must be positive")
        if self.sharp_points < 0:
            raise InputError(f"Sizes.sharp_points must be >= 0, got {self.sharp_points}")
        if not 0 < self.sharp_angle < 180:
            raise InputError(f"Sizes.sharp_angle must be in (0, 180) degrees, got {self.sharp_angle}")
        object.__setattr__(self, "near_surface_sigmas", tuple(float(s) for s in self.near_surface_sigmas))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Sizes:
        known = {f.name for f in fields(cls)}
        # Sizes recorded before sharp_points existed (schema 1) describe sets without sharp.npy.
        return cls(**{"sharp_points": 0, **{k: v for k, v in data.items() if k in known}})


@dataclass(frozen=True)
class ArraySpec:
    dtype: np.dtype
    shape: tuple[str | int, ...]  # letters are resolved from Sizes by `expected_shape`


ARRAY_KEYS: dict[str, ArraySpec] = {
    "surface.npy": ArraySpec(np.dtype("<f2"), ("N", 6)),  # xyz + unit normal
    "sharp.npy": ArraySpec(np.dtype("<f2"), ("S", 6)),  # xyz + unit normal, on sharp edges; optional
    "sdf.npy": ArraySpec(np.dtype("<f2"), ("R", "R", "R")),
    "query.npy": ArraySpec(np.dtype("<f2"), ("Q", 4)),  # xyz + signed distance
    "triplane.npy": ArraySpec(np.dtype("<f2"), (3, len(TRIPLANE_CHANNELS), "R", "R")),
    "views.npy": ArraySpec(np.dtype("u1"), ("V", "H", "H", 3)),
}
TEXT_KEYS = ("caption.txt",)
JSON_KEYS = ("meta.json",)
SAMPLE_KEYS = tuple(ARRAY_KEYS) + TEXT_KEYS + JSON_KEYS
OPTIONAL_KEYS = {"sharp.npy": "sharp_points"}  # key -> the size that is 0 where a set lacks it


def array_keys(sizes: Sizes) -> tuple[str, ...]:
    """The array keys that every sample of a set with these sizes holds."""
    return tuple(k for k in ARRAY_KEYS if k not in OPTIONAL_KEYS or getattr(sizes, OPTIONAL_KEYS[k]) > 0)


def sample_keys(sizes: Sizes) -> tuple[str, ...]:
    """Every key that every sample of a set with these sizes holds."""
    return array_keys(sizes) + TEXT_KEYS + JSON_KEYS


def expected_shape(key: str, sizes: Sizes) -> tuple[int, ...]:
    letters = {
        "N": sizes.surface_points,
        "S": sizes.sharp_points,
        "R": sizes.grid_resolution,
        "Q": sizes.query_points,
        "V": sizes.views,
        "H": sizes.view_size,
    }
    return tuple(letters[d] if isinstance(d, str) else d for d in ARRAY_KEYS[key].shape)


def grid_coords(resolution: int) -> np.ndarray:
    """The 1-D sample positions of the corner-convention grid along one axis."""
    return np.linspace(-1.0, 1.0, resolution)


def grid_points(resolution: int) -> np.ndarray:
    """All grid sample positions, (R^3, 3) float64, in [x, y, z] "ij" order."""
    axis = grid_coords(resolution)
    return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)


def index_to_coord(index: np.ndarray, resolution: int) -> np.ndarray:
    """Maps (fractional) grid indices, e.g. marching-cubes vertices, to cube coordinates."""
    return -1.0 + 2.0 * np.asarray(index, dtype=np.float64) / (resolution - 1)


class SchemaError(InputError):
    """A sample that does not match the schema; the message names the shard, key and reason."""


class DamagedShardError(SchemaError):
    """A shard whose tar is cut, overwritten or missing, or holds other samples than its index says."""


def validate_sample(sample: dict, sizes: Sizes, where: str) -> None:
    """Checks one decoded sample (key -> numpy array / str / dict) against the schema.

    `where` names the sample in errors, e.g. "shard 0000-000003.tar, sample 1a2b".
    """
    for key in sample_keys(sizes):
        if key not in sample:
            raise SchemaError(f"{where}: missing key {key!r}")
    for key in array_keys(sizes):
        array, spec = sample[key], ARRAY_KEYS[key]
        if not isinstance(array, np.ndarray):
            raise SchemaError(f"{where}: key {key!r} is {type(array).__name__}, not an array")
        if array.dtype != spec.dtype:
            raise SchemaError(f"{where}: key {key!r} has dtype {array.dtype}, expected {spec.dtype}")
        shape = expected_shape(key, sizes)
        if array.shape != shape:
            raise SchemaError(f"{where}: key {key!r} has shape {array.shape}, expected {shape}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise SchemaError(f"{where}: key {key!r} has non-finite values")
    if not isinstance(sample["caption.txt"], str):
        raise SchemaError(f"{where}: key 'caption.txt' is not text")
    if not isinstance(sample["meta.json"], dict):
        raise SchemaError(f"{where}: key 'meta.json' is not a JSON object")


def encode_json(data: dict) -> bytes:
    return json.dumps(data, sort_keys=True).encode("utf-8")


# Latent shard sets (`native3d encode`): one sample per object, the autoencoder posterior's mean
# and std (float32, the autoencoder's latent shape, before latent normalization), the object's
# views for image conditioning, its caption and meta. Their `index.json` has "kind": "latent",
# "latent_shape" and the autoencoder checkpoint it came from.
LATENT_ARRAY_KEYS = ("latent_mean.npy", "latent_std.npy", "views.npy")
LATENT_SAMPLE_KEYS = LATENT_ARRAY_KEYS + TEXT_KEYS + JSON_KEYS


def validate_latent_sample(sample: dict, latent_shape: tuple[int, ...], where: str) -> None:
    for key in LATENT_SAMPLE_KEYS:
        if key not in sample:
            raise SchemaError(f"{where}: missing key {key!r}")
    for key in ("latent_mean.npy", "latent_std.npy"):
        array = sample[key]
        if array.dtype != np.float32 or array.shape != tuple(latent_shape):
            raise SchemaError(
                f"{where}: key {key!r} is {array.dtype} {array.shape}, expected float32 {tuple(latent_shape)}"
            )
        if not np.isfinite(array).all():
            raise SchemaError(f"{where}: key {key!r} has non-finite values")
    if sample["views.npy"].dtype != np.uint8 or sample["views.npy"].ndim != 4:
        raise SchemaError(f"{where}: key 'views.npy' is not a uint8 (V, H, W, 3) array")
