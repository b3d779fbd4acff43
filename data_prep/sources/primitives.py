"""Procedural primitives with captions: labelled, license-free shapes for tests and demos.

Twelve classes: six solids (box, sphere, cylinder, cone, torus, capsule) and six composite
objects (table, chair, mug, lamp, snowman, dumbbell) assembled from trimesh.creation parts.
Parts are merged without boolean union; they may overlap, which the winding-number SDF
handles. Each class builder draws its proportions and options from a random generator and
returns the parts, a caption phrase that names the class and its visible attributes, and
the parameters it drew (kept in `meta`).

Item i depends only on (seed, i): its generator is seeded with [seed, i], and the class comes
from a permutation of the classes per block of len(PRIMITIVE_CLASSES) items, so every block
holds each class once. Shapes are built z-up and turned y-up (the glTF/Objaverse convention)
at the end. The overall scale varies, but normalization removes it, so captions only describe
proportions, parts and pose.

Poses: with `poses="any"` (the default) a shape stands upright, tilted 20-50 degrees, on its side
or upside down, and the caption says which; with `poses="upright"` every shape stands upright
with a random turn about the up axis, as category-aligned collections (ShapeNet, most of
Objaverse) are, and no caption names a pose. Shape-distance evaluations that classify a shape
by its nearest reference shapes need the second: a tilted table can lie nearer, by Chamfer
distance, to a tilted box than to the upright tables among the references.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import trimesh
from trimesh.creation import box as _box
from trimesh.creation import capsule as _capsule
from trimesh.creation import cone as _cone
from trimesh.creation import cylinder as _cylinder
from trimesh.creation import icosphere as _icosphere
from trimesh.creation import torus as _torus
from trimesh.transformations import rotation_matrix, translation_matrix

from data_prep.sources import MeshItem

LICENSE = "CC0"
SECTIONS = 32  # around-the-axis resolution of round parts
Z_UP_TO_Y_UP = rotation_matrix(-math.pi / 2, [1, 0, 0])
_POSE_WORDS = {
    "upright": "",
    "tilted": ", tilted",
    "side": ", lying on its side",
    "upside_down": ", upside down",
}


@dataclass
class Shape:
    parts: list[trimesh.Trimesh]
    phrase: str  # "a tall thin cylinder": names the class, no pose
    params: dict = field(default_factory=dict)
    shows_pose: bool = True  # False where rotation is invisible (a round sphere)


POSES = ("any", "upright")


def iter_primitives(
    count: int, seed: int = 0, limit: int | None = None, poses: str = "any"
) -> Iterator[MeshItem]:
    """Yields `count` primitives (the first `limit` of them when given), deterministic in `seed` and `poses`."""
    if poses not in POSES:
        raise ValueError(f"unknown poses {poses!r}; choose from {POSES}")
    stop = count if limit is None else min(count, limit)
    for index in range(stop):
        yield make_primitive(index, seed, poses)


def make_primitive(index: int, seed: int = 0, poses: str = "any") -> MeshItem:
    """Item `index` of the sequence for `seed` (a non-negative int) and `poses` (POSES)."""
    name, build = _BUILDERS[class_index(index, seed)]
    rng = np.random.default_rng([seed, index])
    shape = build(rng)
    pose, tilt, yaw = _random_pose(rng, poses)
    scale = float(rng.uniform(0.5, 2.0))
    transform = Z_UP_TO_Y_UP @ _pose_matrix(tilt, yaw, rng) @ np.diag([scale, scale, scale, 1.0])
    mesh = trimesh.util.concatenate(shape.parts)
    mesh.apply_transform(transform)
    caption = shape.phrase + (_POSE_WORDS[pose] if shape.shows_pose else "")
    meta = {
        "source": "primitives",
        "license": LICENSE,
        "class": name,
        "seed": seed,
        "index": index,
        "params": shape.params,
        "poses": poses,
        "pose": {
            "orientation": pose,
            "tilt_deg": round(math.degrees(tilt), 2),
            "yaw_deg": round(math.degrees(yaw), 2),
        },
        "scale": round(scale, 4),
        "up_axis": "y",
    }
    family = (
        "primitive" if poses == "any" else f"primitive-{poses}"
    )  # another pose law, other objects: other ids
    return MeshItem(id=f"{family}-s{seed}-{index:06d}", caption=caption, meta=meta, mesh=mesh)


def class_index(index: int, seed: int) -> int:
    block, slot = divmod(index, len(_BUILDERS))
    order = np.random.default_rng([seed, block, 1]).permutation(len(_BUILDERS))
    return int(order[slot])


def _random_pose(rng: np.random.Generator, poses: str) -> tuple[str, float, float]:
    """An orientation name, a tilt away from upright and a yaw about the up axis (radians)."""
    yaw = float(rng.uniform(0, 2 * math.pi))
    if poses == "upright":
        return "upright", 0.0, yaw
    u = rng.uniform()
    if u < 0.45:
        return "upright", 0.0, yaw
    if u < 0.75:
        return "tilted", math.radians(float(rng.uniform(20, 50))), yaw
    if u < 0.9:
        return "side", math.pi / 2, yaw
    return "upside_down", math.pi, yaw


def _pose_matrix(tilt: float, yaw: float, rng: np.random.Generator) -> np.ndarray:
    """Yaw about z, then tilt about a random horizontal axis."""
    heading = float(rng.uniform(0, 2 * math.pi))
    axis = [math.cos(heading), math.sin(heading), 0.0]
    return rotation_matrix(tilt, axis) @ rotation_matrix(yaw, [0, 0, 1])


# ---- part helpers (z-up) -------------------------------------------------------------------


def _rod(radius: float, start: tuple, end: tuple) -> trimesh.Trimesh:
    """A cylinder between two points."""
    return _cylinder(radius, segment=[start, end], sections=SECTIONS)


def _ball(radius: float, center: tuple) -> trimesh.Trimesh:
    return _icosphere(subdivisions=3, radius=radius).apply_translation(center)


def _slab(extents: tuple, center: tuple) -> trimesh.Trimesh:
    return _box(extents=extents, transform=translation_matrix(center))


def _frustum(r_bottom: float, r_top: float, z0: float, z1: float) -> trimesh.Trimesh:
    """A truncated cone: a cylinder whose top ring is rescaled."""
    mesh = _rod(r_bottom, (0, 0, z0), (0, 0, z1))
    top = mesh.vertices[:, 2] > (z0 + z1) / 2
    mesh.vertices[top, :2] *= r_top / r_bottom
    return mesh


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """Ratios drawn evenly on a log scale, so "tall" and "wide" are equally likely."""
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _params(**values) -> dict:
    return {k: round(float(v), 4) if isinstance(v, (float, np.floating)) else v for k, v in values.items()}


# ---- simple solids -------------------------------------------------------------------------


def build_box(rng: np.random.Generator) -> Shape:
    x, y, z = (1.0, 1.0, 1.0) if rng.uniform() < 0.25 else rng.uniform(0.2, 1.5, 3)
    if max(x, y, z) / min(x, y, z) < 1.25:
        phrase = "a cube-shaped box"
    elif z >= 1.5 * max(x, y):
        phrase = "a tall narrow box"
    elif z <= 0.5 * min(x, y):
        phrase = "a flat box, like a slab"
    elif max(x, y) >= 1.5 * max(min(x, y), z):
        phrase = "a long box"
    else:
        phrase = "a box"
    return Shape([_slab((x, y, z), (0, 0, 0))], phrase, _params(x=x, y=y, z=z))


def build_sphere(rng: np.random.Generator) -> Shape:
    kind = rng.choice(["round", "flattened", "elongated"], p=[0.5, 0.25, 0.25])
    stretch = {"round": 1.0, "flattened": rng.uniform(0.4, 0.7), "elongated": rng.uniform(1.5, 2.2)}[kind]
    ball = _ball(0.5, (0, 0, 0)).apply_scale([1.0, 1.0, stretch])
    phrase = {
        "round": "a round sphere",
        "flattened": "a flattened sphere",
        "elongated": "an elongated sphere",
    }[kind]
    return Shape([ball], phrase, _params(stretch=stretch), shows_pose=kind != "round")


def build_cylinder(rng: np.random.Generator) -> Shape:
    ratio = _log_uniform(rng, 0.15, 5.0)  # height / diameter
    radius = 0.5
    height = 2 * radius * ratio
    if ratio > 2:
        phrase = "a tall thin cylinder"
    elif ratio < 0.5:
        phrase = "a short wide cylinder, like a disc"
    else:
        phrase = "a cylinder"
    part = _rod(radius, (0, 0, -height / 2), (0, 0, height / 2))
    return Shape([part], phrase, _params(radius=radius, height=height))


def build_cone(rng: np.random.Generator) -> Shape:
    ratio = _log_uniform(rng, 0.3, 3.0)  # height / base diameter
    radius = 0.5
    height = 2 * radius * ratio
    phrase = "a tall pointed cone" if ratio > 1.5 else "a short wide cone" if ratio < 0.6 else "a cone"
    return Shape([_cone(radius, height, sections=SECTIONS)], phrase, _params(radius=radius, height=height))


def build_torus(rng: np.random.Generator) -> Shape:
    minor = float(rng.uniform(0.1, 0.45))  # tube radius over ring radius
    if minor < 0.2:
        phrase = "a thin ring-shaped torus"
    elif minor > 0.33:
        phrase = "a thick torus, like a donut"
    else:
        phrase = "a torus"
    part = _torus(1.0, minor, major_sections=SECTIONS, minor_sections=16)
    return Shape([part], phrase, _params(major_radius=1.0, minor_radius=minor))


def build_capsule(rng: np.random.Generator) -> Shape:
    ratio = float(rng.uniform(1.2, 5.0))  # total length / diameter
    radius = 0.5
    phrase = "a long capsule" if ratio > 3 else "a short stubby capsule" if ratio < 1.8 else "a capsule"
    part = _capsule(height=2 * radius * (ratio - 1), radius=radius, count=[SECTIONS, SECTIONS // 2])
    return Shape([part], phrase, _params(radius=radius, length=2 * radius * ratio))


# ---- composite objects ---------------------------------------------------------------------


def build_table(rng: np.random.Generator) -> Shape:
    top = "round" if rng.uniform() < 0.3 else "rectangular"
    width = float(rng.uniform(1.0, 2.5))
    depth = width if top == "round" else width * float(rng.uniform(0.4, 1.0))
    height = float(rng.uniform(0.5, 1.6))
    thick, leg_r = float(rng.uniform(0.05, 0.12)), float(rng.uniform(0.03, 0.08))
    if top == "round":
        parts = [_rod(width / 2, (0, 0, height - thick), (0, 0, height))]
        legs = int(rng.choice([1, 3]))
    else:
        parts = [_slab((width, depth, thick), (0, 0, height - thick / 2))]
        legs = 4
    parts += _table_legs(legs, width, depth, height - thick, leg_r)
    if top == "rectangular" and depth > 0.85 * width:
        top = "square"
    aspect = max(width, depth) / height
    size = "wide low " if aspect > 2.2 else "tall narrow " if aspect < 1.0 else ""
    leg_words = {1: "a single central pedestal", 3: "three legs", 4: "four legs"}[legs]
    phrase = f"a {size}{top} table with {leg_words}"
    return Shape(parts, phrase, _params(top=top, width=width, depth=depth, height=height, legs=legs))


def _table_legs(legs: int, width: float, depth: float, height: float, radius: float) -> list[trimesh.Trimesh]:
    if legs == 1:
        return [_rod(2 * radius, (0, 0, 0), (0, 0, height)), _rod(width / 4, (0, 0, 0), (0, 0, 0.04))]
    if legs == 3:
        angles = [2 * math.pi * k / 3 for k in range(3)]
        spots = [(0.8 * width / 2 * math.cos(a), 0.8 * width / 2 * math.sin(a)) for a in angles]
    else:
        spots = [
            (sx * (width / 2 - 2 * radius), sy * (depth / 2 - 2 * radius)) for sx in (-1, 1) for sy in (-1, 1)
        ]
    return [_rod(radius, (x, y, 0), (x, y, height)) for x, y in spots]


def build_chair(rng: np.random.Generator) -> Shape:
    seat, seat_h = float(rng.uniform(0.8, 1.2)), float(rng.uniform(0.8, 1.2))
    back_h = float(rng.uniform(0.5, 1.8))
    arms = bool(rng.uniform() < 0.4)
    leg_r, thick = float(rng.uniform(0.04, 0.07)), 0.08
    inset = seat / 2 - leg_r
    corners = [(sx * inset, sy * inset) for sx in (-1, 1) for sy in (-1, 1)]
    parts = [_rod(leg_r, (x, y, 0), (x, y, seat_h)) for x, y in corners]
    parts.append(_slab((seat, seat, thick), (0, 0, seat_h + thick / 2)))
    parts.append(_slab((seat, thick, back_h), (0, -seat / 2 + thick / 2, seat_h + thick + back_h / 2)))
    if arms:
        parts += _armrests(seat, seat_h, thick)
    back = "a tall backrest" if back_h > 1.2 else "a low backrest" if back_h < 0.8 else "a backrest"
    phrase = f"a chair with four legs, {back} and armrests" if arms else f"a chair with four legs and {back}"
    return Shape(parts, phrase, _params(seat=seat, seat_height=seat_h, back_height=back_h, arms=arms))


def _armrests(seat: float, seat_h: float, thick: float) -> list[trimesh.Trimesh]:
    """A bar along each side of the seat, held by a post at its front end."""
    arm_z, y = seat_h + thick + 0.3, seat / 2 - thick
    parts = []
    for x in (-(seat / 2 - thick / 2), seat / 2 - thick / 2):
        parts.append(_slab((thick, seat, thick), (x, 0, arm_z)))
        parts.append(_rod(thick / 3, (x, y, seat_h), (x, y, arm_z)))
    return parts


def build_mug(rng: np.random.Generator) -> Shape:
    radius, height = float(rng.uniform(0.4, 0.7)), float(rng.uniform(0.6, 1.6))
    wall = float(rng.uniform(0.05, 0.1))
    shell = trimesh.creation.annulus(radius - wall, radius, height=height, sections=SECTIONS)
    shell.apply_translation([0, 0, height / 2])
    bottom = _rod(radius, (0, 0, 0), (0, 0, wall))
    loop = float(rng.uniform(0.22, 0.32)) * height
    handle = _torus(loop, wall * 0.8, major_sections=SECTIONS, minor_sections=12)
    upright_ring = rotation_matrix(math.pi / 2, [1, 0, 0])
    handle.apply_transform(translation_matrix([radius + 0.5 * loop, 0, height / 2]) @ upright_ring)
    # Press the half of the ring that would poke into the cup flat against the wall.
    handle.vertices[:, 0] = np.maximum(handle.vertices[:, 0], radius - wall / 2)
    ratio = height / (2 * radius)
    size = "tall narrow " if ratio > 1.3 else "short wide " if ratio < 0.7 else ""
    phrase = f"a {size}mug with a handle"
    return Shape(
        [shell, bottom, handle], phrase, _params(radius=radius, height=height, wall=wall, handle=loop)
    )


def build_lamp(rng: np.random.Generator) -> Shape:
    pole_h, pole_r = float(rng.uniform(0.8, 3.0)), float(rng.uniform(0.03, 0.06))
    base_r = float(rng.uniform(0.3, 0.5))
    shade_r, shade_h = float(rng.uniform(0.3, 0.6)), float(rng.uniform(0.3, 0.6))
    conical = bool(rng.uniform() < 0.5)
    shade_top = shade_r * (float(rng.uniform(0.3, 0.6)) if conical else 0.95)
    parts = [
        _rod(base_r, (0, 0, 0), (0, 0, 0.08)),
        _rod(pole_r, (0, 0, 0), (0, 0, pole_h)),
        _frustum(shade_r, shade_top, pole_h - 0.6 * shade_h, pole_h + 0.4 * shade_h),
    ]
    kind = "tall floor lamp" if pole_h > 2.0 else "short desk lamp" if pole_h < 1.3 else "lamp"
    phrase = f"a {kind} with a {'conical' if conical else 'drum'} shade"
    return Shape(
        parts, phrase, _params(pole_height=pole_h, base_radius=base_r, shade_radius=shade_r, conical=conical)
    )


def build_snowman(rng: np.random.Generator) -> Shape:
    balls = int(rng.choice([2, 3], p=[0.3, 0.7]))
    radius, shrink = float(rng.uniform(0.5, 0.7)), float(rng.uniform(0.6, 0.8))
    hat, nose = bool(rng.uniform() < 0.5), bool(rng.uniform() < 0.5)
    radii = [radius * shrink**k for k in range(balls)]
    centers = [radius]
    for below, above in zip(radii, radii[1:]):
        centers.append(centers[-1] + 0.85 * (below + above))  # balls sink a little into each other
    parts = [_ball(r, (0, 0, z)) for r, z in zip(radii, centers)]
    head_r, head_z = radii[-1], centers[-1]
    if hat:
        parts.append(_rod(head_r * 1.1, (0, 0, head_z + 0.8 * head_r), (0, 0, head_z + 0.85 * head_r)))
        parts.append(_rod(head_r * 0.7, (0, 0, head_z + 0.8 * head_r), (0, 0, head_z + 1.6 * head_r)))
    if nose:
        carrot = _cone(head_r * 0.15, head_r * 0.9, sections=16)
        carrot.apply_transform(
            translation_matrix([head_r * 0.8, 0, head_z]) @ rotation_matrix(math.pi / 2, [0, 1, 0])
        )
        parts.append(carrot)
    extras = [w for w, on in (("a top hat", hat), ("a carrot nose", nose)) if on]
    count = {2: "two", 3: "three"}[balls]
    phrase = f"a snowman of {count} stacked balls" + (" with " + " and ".join(extras) if extras else "")
    return Shape(parts, phrase, _params(balls=balls, radius=radius, shrink=shrink, hat=hat, nose=nose))


def build_dumbbell(rng: np.random.Generator) -> Shape:
    length, bar_r = float(rng.uniform(1.0, 2.5)), float(rng.uniform(0.05, 0.1))
    discs = bool(rng.uniform() < 0.5)
    weight_r = float(rng.uniform(0.3, 0.6)) if discs else float(rng.uniform(0.2, 0.45))
    width, half = float(rng.uniform(0.1, 0.3)), length / 2
    parts = [_rod(bar_r, (-half, 0, 0), (half, 0, 0))]
    for x in (-half, half):
        inner = x - math.copysign(width, x)
        parts.append(_rod(weight_r, (inner, 0, 0), (x, 0, 0)) if discs else _ball(weight_r, (x, 0, 0)))
    bar = "long " if length / weight_r > 5 else "short " if length / weight_r < 3 else ""
    phrase = f"a {bar}dumbbell with {'disc' if discs else 'round'} weights"
    return Shape(parts, phrase, _params(length=length, bar_radius=bar_r, weight_radius=weight_r, discs=discs))


_BUILDERS: tuple[tuple[str, Callable[[np.random.Generator], Shape]], ...] = (
    ("box", build_box),
    ("sphere", build_sphere),
    ("cylinder", build_cylinder),
    ("cone", build_cone),
    ("torus", build_torus),
    ("capsule", build_capsule),
    ("table", build_table),
    ("chair", build_chair),
    ("mug", build_mug),
    ("lamp", build_lamp),
    ("snowman", build_snowman),
    ("dumbbell", build_dumbbell),
)
PRIMITIVE_CLASSES: tuple[str, ...] = tuple(name for name, _ in _BUILDERS)
