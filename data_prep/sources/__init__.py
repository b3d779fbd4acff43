"""Mesh sources, one interface: each yields `MeshItem`s in a stable order.

A source is a plain function returning an iterator of items; the build job partitions them by
id, so every source must give each object a stable, unique id.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import trimesh


@dataclass
class MeshItem:
    id: str  # stable object id: an Objaverse uid, or a hash of the source path
    path: str | None = None  # absolute path of the source file, where there is one
    caption: str = ""
    meta: dict = field(default_factory=dict)  # source, license, class label, ...
    mesh: trimesh.Trimesh | None = None  # in-memory mesh, for sources without files


def path_id(path: str, root: str | None = None) -> str:
    """A stable id from a file path (relative to `root` when given, so it survives moving the tree)."""
    import os

    key = os.path.relpath(path, root) if root else os.path.abspath(path)
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:20]
