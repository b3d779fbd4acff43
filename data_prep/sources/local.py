"""Any folder of mesh files: every file with a mesh extension below `root`, in sorted order.

Ids are `path_id(path, root)`, so they survive moving the folder. Captions come from an
optional `key,caption` CSV (see `captions.read_captions_csv`) whose key is the path relative to
`root` with forward slashes (`chairs/a.glb`); a row keyed by the bare file stem (`a`) is used
when no relative-path row matches, which is convenient for flat folders.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from itertools import islice

from data_prep.sources import MeshItem, path_id
from data_prep.sources.captions import read_captions_csv
from native3d.errors import InputError, MissingFileError
from native3d.geometry.mesh import MESH_EXTENSIONS

log = logging.getLogger(__name__)


def iter_local(root: str, captions_csv: str | None = None, limit: int | None = None) -> Iterator[MeshItem]:
    """Yields the mesh files under `root` (recursively), sorted by relative path."""
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise MissingFileError(f"mesh folder {root} does not exist")
    found = find_mesh_files(root)
    if not found:
        raise InputError(f"{root}: no mesh files below it (looked for {', '.join(MESH_EXTENSIONS)})")
    captions = read_captions_csv(captions_csv) if captions_csv else {}
    for relpath in islice(found, limit):
        path = os.path.join(root, relpath)
        meta = {"source": "local", "relpath": relpath}
        yield MeshItem(id=path_id(path, root), path=path, caption=_caption(relpath, captions), meta=meta)


def find_mesh_files(root: str) -> list[str]:
    """Relative paths (forward slashes) of the files under `root` with a mesh extension, sorted."""
    found = []
    for folder, _, files in os.walk(root):
        for name in files:
            if name.lower().endswith(MESH_EXTENSIONS):
                found.append(os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/"))
    return sorted(found)


def _caption(relpath: str, captions: dict[str, str]) -> str:
    if relpath in captions:
        return captions[relpath]
    stem = os.path.splitext(os.path.basename(relpath))[0]
    return captions.get(stem, "")
