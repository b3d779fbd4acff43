"""Mesh sources: each yields valid items with stable unique ids, honours `limit`, and captions.

Objaverse runs through the objaverse package's own code against a local cache laid out as the
package expects (built here from pybullet meshes); any attempt to download fails the test.
"""

from __future__ import annotations

import gzip
import json
import os
import urllib.request

import numpy as np
import objaverse
import pybullet_data
import pytest
import trimesh

from data_prep.sources import MeshItem, path_id
from data_prep.sources.captions import read_captions_csv
from data_prep.sources.local import iter_local
from data_prep.sources.objaverse import annotation_caption, iter_objaverse, use_objaverse_cache
from data_prep.sources.primitives import PRIMITIVE_CLASSES, iter_primitives
from data_prep.sources.pybullet import LICENSE as PYBULLET_LICENSE
from data_prep.sources.pybullet import caption_from_path, iter_pybullet
from native3d.geometry.mesh import check_mesh, load_mesh

PYBULLET_MESHES = ("duck.obj", "teddy2_VHACD_CHs.obj", "cube.obj")
UIDS = (
    "0a1b2c3d4e5f60718293a4b5c6d7e8f9",
    "5f0e9d8c7b6a59483726150f1e2d3c4b",
    "ffeeddccbbaa99887766554433221100",
)
ANNOTATIONS = {
    UIDS[0]: {
        "name": "Rubber Duck",
        "license": "by",
        "uri": "https://example.org/models/duck",
        "tags": [{"name": "duck"}, {"name": "toy"}],
        "description": "A yellow bath toy. See https://x.y/z",
    },
    UIDS[1]: {
        "name": "Teddy",
        "license": "by-nc",
        "uri": "https://example.org/models/teddy",
        "tags": [{"name": "bear"}],
        "description": "",
    },
    UIDS[2]: {
        "name": "Box",
        "license": "cc0",
        "uri": "https://example.org/models/box",
        "tags": [],
        "description": "Just a cube.",
    },
}
LVIS = {"duck": [UIDS[0]], "teddy_bear": [UIDS[1]], "box": [UIDS[2]]}


@pytest.fixture(autouse=True)
def sources_no_download(monkeypatch):
    """The objaverse package downloads through urlretrieve; in these tests it must never need to."""

    def refuse(url, *args, **kwargs):
        raise AssertionError(f"test tried to download {url}")

    monkeypatch.setattr(urllib.request, "urlretrieve", refuse)


@pytest.fixture(scope="module")
def sources_objaverse_cache(tmp_path_factory) -> str:
    """A cache dir as objaverse 0.1.7 lays it out, over two metadata/glb directories."""
    base = tmp_path_factory.mktemp("objaverse")
    versioned = base / "hf-objaverse-v1"
    object_paths, metadata = {}, {}
    for i, (uid, name) in enumerate(zip(UIDS, PYBULLET_MESHES)):
        group = f"000-{i % 2:03d}"
        object_paths[uid] = f"glbs/{group}/{uid}.glb"
        glb = versioned / object_paths[uid]
        glb.parent.mkdir(parents=True, exist_ok=True)
        load_mesh(os.path.join(pybullet_data.getDataPath(), name)).export(glb, file_type="glb")
        metadata.setdefault(group, {})[uid] = {"uid": uid, **ANNOTATIONS[uid]}
    _write_json_gz(versioned / "object-paths.json.gz", object_paths)
    _write_json_gz(versioned / "lvis-annotations.json.gz", LVIS)
    for group, data in metadata.items():
        _write_json_gz(versioned / "metadata" / f"{group}.json.gz", data)
    return str(base)


def _write_json_gz(path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        json.dump(data, f)


@pytest.fixture
def sources_restore_objaverse(monkeypatch):
    """Lets `use_objaverse_cache` change the package globals, and puts them back after the test."""
    monkeypatch.setattr(objaverse, "BASE_PATH", objaverse.BASE_PATH)
    monkeypatch.setattr(objaverse, "_VERSIONED_PATH", objaverse._VERSIONED_PATH)


def _assert_file_items(items: list[MeshItem], source: str) -> None:
    assert items, "the source yielded nothing"
    assert len({item.id for item in items}) == len(items)
    for item in items:
        assert item.meta["source"] == source
        assert os.path.isabs(item.path) and os.path.isfile(item.path)
        assert len(load_mesh(item.path).faces) > 0


# ---- objaverse -----------------------------------------------------------------------------


def test_objaverse_reads_local_cache(sources_objaverse_cache, sources_restore_objaverse):
    items = list(iter_objaverse(sources_objaverse_cache))
    assert [item.id for item in items] == sorted(UIDS)
    _assert_file_items(items, "objaverse")
    assert objaverse._VERSIONED_PATH == os.path.join(sources_objaverse_cache, "hf-objaverse-v1")
    by_id = {item.id: item for item in items}
    duck = by_id[UIDS[0]]
    assert duck.path == os.path.join(objaverse._VERSIONED_PATH, "glbs", "000-000", f"{UIDS[0]}.glb")
    assert duck.caption == "Rubber Duck. Tags: duck, toy. A yellow bath toy. See"
    assert duck.meta["license"] == "by" and duck.meta["name"] == "Rubber Duck"
    assert duck.meta["uri"] == "https://example.org/models/duck"
    assert by_id[UIDS[1]].caption == "Teddy. Tags: bear."
    assert by_id[UIDS[1]].meta["license"] == "by-nc"
    assert by_id[UIDS[2]].caption == "Box. Just a cube."


def test_objaverse_limit_keeps_sorted_prefix(sources_objaverse_cache, sources_restore_objaverse):
    items = list(iter_objaverse(sources_objaverse_cache, limit=2))
    assert [item.id for item in items] == sorted(UIDS)[:2]


def test_objaverse_uids_file_selects(sources_objaverse_cache, sources_restore_objaverse, tmp_path):
    uids_file = tmp_path / "uids.txt"
    uids_file.write_text(f"# chosen\n{UIDS[2]}.glb\n\n{UIDS[0]}\n{'9' * 32}\n")  # the last one is unknown
    items = list(iter_objaverse(sources_objaverse_cache, uids_file=str(uids_file)))
    assert [item.id for item in items] == sorted([UIDS[0], UIDS[2]])


def test_objaverse_lvis_categories_select(sources_objaverse_cache, sources_restore_objaverse):
    items = list(iter_objaverse(sources_objaverse_cache, lvis_categories=["teddy_bear", "box"]))
    assert {item.id: item.meta["lvis_category"] for item in items} == {UIDS[1]: "teddy_bear", UIDS[2]: "box"}
    with pytest.raises(ValueError, match="unicorn"):
        list(iter_objaverse(sources_objaverse_cache, lvis_categories=["unicorn"]))


def test_objaverse_captions_csv_overrides_annotations(
    sources_objaverse_cache, sources_restore_objaverse, tmp_path
):
    csv_path = tmp_path / "Cap3D_automated_Objaverse.csv"
    csv_path.write_text(f'{UIDS[0]},"A yellow rubber duck, floating."\n{UIDS[1]},a brown teddy bear\n')
    items = {item.id: item for item in iter_objaverse(sources_objaverse_cache, captions_csv=str(csv_path))}
    assert items[UIDS[0]].caption == "A yellow rubber duck, floating."
    assert items[UIDS[1]].caption == "a brown teddy bear"
    assert items[UIDS[2]].caption == ""  # not in the CSV: no caption rather than a different kind
    assert items[UIDS[0]].meta["license"] == "by"


def test_use_objaverse_cache_sets_package_paths(sources_restore_objaverse, tmp_path):
    versioned = use_objaverse_cache(str(tmp_path))
    assert objaverse.BASE_PATH == str(tmp_path)
    assert objaverse._VERSIONED_PATH == versioned == os.path.join(str(tmp_path), "hf-objaverse-v1")


def test_annotation_caption_shortens_long_descriptions():
    long = "First sentence here. " + "word " * 100
    caption = annotation_caption({"name": "Thing", "tags": [], "description": long})
    assert caption == "Thing. First sentence here."


# ---- captions CSV --------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["", "uid,caption\n", "path,text\n"])
def test_read_captions_csv_with_or_without_header(tmp_path, header):
    path = tmp_path / "captions.csv"
    path.write_text(header + 'abc,"a red, round ball"\ndef,unquoted, with comma\n')
    assert read_captions_csv(str(path)) == {"abc": "a red, round ball", "def": "unquoted, with comma"}


# ---- local folder --------------------------------------------------------------------------


@pytest.fixture
def sources_local_folder(tmp_path) -> str:
    root = tmp_path / "meshes"
    (root / "chairs").mkdir(parents=True)
    shapes = {
        "chairs/seat.glb": trimesh.creation.box(extents=(1, 1, 0.2)),
        "ball.PLY": trimesh.creation.icosphere(subdivisions=1),
        "can.stl": trimesh.creation.cylinder(0.3, 1.0),
        "tip.obj": trimesh.creation.cone(0.5, 1.0),
        "ring.off": trimesh.creation.torus(1.0, 0.2, major_sections=16, minor_sections=8),
    }
    for relpath, mesh in shapes.items():
        mesh.export(root / relpath, file_type=relpath.rsplit(".", 1)[1].lower())
    (root / "README.txt").write_text("not a mesh")
    return str(root)


def test_local_finds_meshes_sorted_with_ids(sources_local_folder):
    items = list(iter_local(sources_local_folder))
    relpaths = [item.meta["relpath"] for item in items]
    assert relpaths == ["ball.PLY", "can.stl", "chairs/seat.glb", "ring.off", "tip.obj"]
    _assert_file_items(items, "local")
    assert [item.id for item in items] == [path_id(item.path, sources_local_folder) for item in items]
    assert [item.id for item in iter_local(sources_local_folder)] == [item.id for item in items]
    assert [item.id for item in iter_local(sources_local_folder, limit=2)] == [item.id for item in items[:2]]
    assert all(item.caption == "" for item in items)


def test_local_captions_by_relative_path_then_stem(sources_local_folder, tmp_path):
    csv_path = tmp_path / "captions.csv"
    csv_path.write_text("path,caption\nchairs/seat.glb,a flat seat\nseat,by stem only\ntip,a cone\n")
    captions = {
        item.meta["relpath"]: item.caption for item in iter_local(sources_local_folder, str(csv_path))
    }
    assert captions["chairs/seat.glb"] == "a flat seat"  # the relative path wins over the stem
    assert captions["tip.obj"] == "a cone"
    assert captions["can.stl"] == ""


def test_local_missing_folder_fails_loudly(tmp_path):
    with pytest.raises(FileNotFoundError):
        list(iter_local(str(tmp_path / "nowhere")))


# ---- pybullet ------------------------------------------------------------------------------


def test_pybullet_lists_shipped_objs_in_stable_order():
    items = list(iter_pybullet())
    assert len(items) > 1000
    relpaths = [item.meta["relpath"] for item in items]
    assert relpaths == sorted(relpaths) and all(p.endswith(".obj") for p in relpaths)
    assert len({item.id for item in items}) == len(items)
    root = pybullet_data.getDataPath()
    assert all(item.id == path_id(item.path, root) for item in items)
    assert {item.meta["license"] for item in items} == {PYBULLET_LICENSE}
    first = list(iter_pybullet(limit=3))
    assert [item.id for item in first] == [item.id for item in items[:3]]
    _assert_file_items(first, "pybullet")


@pytest.mark.parametrize(
    "relpath, caption",
    [
        ("teddy2_VHACD_CHs.obj", "teddy 2"),
        ("random_urdfs/017/017.obj", "random object 17"),
        ("table/table.obj", "table"),
        ("franka_panda/meshes/collision/link3.obj", "franka panda link 3"),
        ("xarm/xarm_description/meshes/xarm6/collision/link6_vhacd.obj", "xarm 6 link 6"),
        ("cloth_z_up.obj", "cloth"),
    ],
)
def test_pybullet_caption_from_path(relpath, caption):
    assert caption_from_path(relpath) == caption


# ---- primitives ----------------------------------------------------------------------------


def test_primitives_are_valid_labelled_meshes():
    items = list(iter_primitives(40, seed=3))
    assert len({item.id for item in items}) == 40
    assert {item.meta["class"] for item in items} == set(PRIMITIVE_CLASSES)
    assert len(PRIMITIVE_CLASSES) >= 10
    for item in items:
        assert item.path is None and isinstance(item.mesh, trimesh.Trimesh)
        check_mesh(item.mesh)
        assert item.meta["class"] in item.caption, item.caption
        assert item.meta["source"] == "primitives" and item.meta["license"] == "CC0"
        json.dumps(item.meta)  # meta goes into meta.json as is


def test_primitives_are_deterministic_and_independent_of_count():
    first = list(iter_primitives(24, seed=7))
    again = list(iter_primitives(6, seed=7))
    for a, b in zip(first, again):
        assert a.id == b.id and a.caption == b.caption and a.meta == b.meta
        np.testing.assert_array_equal(a.mesh.vertices, b.mesh.vertices)
        np.testing.assert_array_equal(a.mesh.faces, b.mesh.faces)
    assert [item.id for item in iter_primitives(24, seed=7, limit=5)] == [item.id for item in first[:5]]


def test_primitive_seeds_differ():
    a = list(iter_primitives(12, seed=0))
    b = list(iter_primitives(12, seed=1))
    assert not {item.id for item in a} & {item.id for item in b}
    differ = [
        x.meta["class"] != y.meta["class"] or x.meta["params"] != y.meta["params"] for x, y in zip(a, b)
    ]
    assert all(differ)


def test_upright_primitives_stand_upright_and_are_other_objects():
    upright = list(iter_primitives(48, seed=0, poses="upright"))
    assert {item.meta["pose"]["orientation"] for item in upright} == {"upright"}
    assert not any(word in item.caption for item in upright for word in ("tilted", "side", "upside"))
    cylinders = [item.mesh for item in upright if item.meta["class"] == "cylinder"]
    for mesh in cylinders:  # the axis is the up axis (y): every vertex lies on one of the two caps
        heights = np.unique(np.round(mesh.vertices[:, 1], 6))
        assert len(heights) == 2, heights
    turns = {item.meta["pose"]["yaw_deg"] for item in upright}
    assert len(turns) == len(upright)  # a random turn about the up axis each
    anywise = list(iter_primitives(48, seed=0))
    assert not {item.id for item in upright} & {item.id for item in anywise}
    assert {item.meta["pose"]["orientation"] for item in anywise} > {"upright"}
    with pytest.raises(ValueError, match="poses"):
        list(iter_primitives(2, poses="sideways"))


@pytest.mark.parametrize("source", ["objaverse", "pybullet", "primitives", "local"])
def test_every_source_builds_shards_that_read_back(
    source, sources_objaverse_cache, sources_restore_objaverse, sources_local_folder, tmp_path
):
    from data_prep.cli import main as prep
    from native3d.data.schema import ARRAY_KEYS, Sizes, array_keys, expected_shape
    from native3d.data.shards import iter_samples

    options = {
        "objaverse": ["--cache-dir", sources_objaverse_cache],
        "pybullet": [],
        "primitives": ["--count", "2"],
        "local": ["--root", sources_local_folder],
    }[source]
    sizes = Sizes(
        surface_points=128, grid_resolution=12, query_points=256, views=1, view_size=24, sharp_points=32
    )
    out = tmp_path / "shards"
    size_args = [
        "--surface-points",
        "128",
        "--grid-resolution",
        "12",
        "--query-points",
        "256",
        "--views",
        "1",
        "--view-size",
        "24",
        "--sharp-points",
        "32",
    ]
    assert prep(["build", "--source", source, *options, "--limit", "2", "--out", str(out), *size_args]) == 0
    assert prep(["index", "--out", str(out)]) == 0
    samples = list(iter_samples(out))
    assert len(samples) == 2
    for sample in samples:
        assert sample["meta.json"]["source"] == source
        assert sample["meta.json"]["sharp_source"] in ("edges", "curvature", "uniform")
        for key in array_keys(sizes):
            assert (
                sample[key].shape == expected_shape(key, sizes) and sample[key].dtype == ARRAY_KEYS[key].dtype
            )
