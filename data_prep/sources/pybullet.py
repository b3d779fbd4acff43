"""The OBJ meshes that `pybullet_data` ships (~1,100): embedded data for demos and tests.

Most are `random_urdfs/NNN/NNN.obj` (procedural rocks and blobs); the rest are robot links,
toys and props. Captions are the file and folder names in words ("teddy 2", "random object 17",
"franka panda link 3"): modest, but they are all the package says about its meshes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from itertools import islice

import pybullet_data

from data_prep.sources import MeshItem, path_id
from data_prep.sources.local import find_mesh_files

LICENSE = "zlib (pybullet_data)"

# Folders that say how a robot is packaged rather than what the object is; a caption names the
# nearest folder not in this set.
_GENERIC_FOLDERS = frozenset(
    {"meshes", "collision", "visual", "objects", "urdf", "toys", "xarm_description", "models_outdoor"}
)
# Name parts that record how a mesh was processed (convex decomposition, resolution, axes).
_NOISE_WORDS = frozenset({"vhacd", "chs", "col", "lores", "zup", "mod", "textured"})


def iter_pybullet(limit: int | None = None) -> Iterator[MeshItem]:
    """Yields pybullet_data's OBJ files, sorted by path relative to the data folder."""
    root = pybullet_data.getDataPath()
    objs = [p for p in find_mesh_files(root) if p.lower().endswith(".obj")]
    for relpath in islice(objs, limit):
        path = os.path.join(root, relpath)
        meta = {"source": "pybullet", "license": LICENSE, "relpath": relpath}
        yield MeshItem(id=path_id(path, root), path=path, caption=caption_from_path(relpath), meta=meta)


def caption_from_path(relpath: str) -> str:
    """Words from a relative path: the nearest meaningful folder and the file stem, deduplicated."""
    *folders, name = relpath.split("/")
    stem = os.path.splitext(name)[0]
    if folders[:1] == ["random_urdfs"]:
        return f"random object {int(stem)}" if stem.isdigit() else f"random object {_words(stem)}"
    folder = next((f for f in reversed(folders) if f not in _GENERIC_FOLDERS), "")
    words = _words(folder).split() + _words(stem).split()
    # Drop a word already said ("table/table.obj"), but keep numbers: "xarm 6 link 6".
    deduplicated = [w for i, w in enumerate(words) if w.isdigit() or w not in words[:i]]
    return " ".join(deduplicated)


def _words(name: str) -> str:
    """ "teddy2_VHACD_CHs" -> "teddy 2"; "link2_vhacd2" -> "link 2"; "cloth_z_up" -> "cloth"."""
    name = re.sub(r"_z_up$", "", name)
    tokens = [t for t in re.split(r"[\s_\-.]+", name) if t and not _is_noise(t)]
    spaced = (re.sub(r"([a-z])([A-Z])", r"\1 \2", t) for t in tokens)  # camelCase
    spaced = (re.sub(r"([A-Za-z]{2,})(\d)", r"\1 \2", t) for t in spaced)  # link1 -> link 1, a1 stays
    return " ".join(spaced).lower()


def _is_noise(token: str) -> bool:
    return re.sub(r"\d+$", "", token.lower()) in _NOISE_WORDS
