"""`native3d evaluate`: reconstruction metrics of a tiny trained autoencoder, and a folder of
meshes against a reference shard set (MMD / COV / 1-NNA, prompt accuracy, failures, errors)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_training import fit

from data_prep.sources.primitives import iter_primitives
from native3d.cli import main as native3d
from native3d.data.shards import iter_samples
from native3d.evaluation.generation import PointSet, distribution_metrics, evaluate_generation, prompted_class
from native3d.evaluation.reconstruction import (
    Reconstruction,
    reference_mesh,
    score_reconstructions,
    summarize,
)


@pytest.fixture(scope="module")
def autoencoder_ckpt(primitive_shards, tmp_path_factory) -> Path:
    return fit("triplane_tiny.yaml", primitive_shards, tmp_path_factory.mktemp("ae"), steps=4)


@pytest.fixture(scope="module")
def reference_meshes(tmp_path_factory) -> Path:
    """The 24 primitives of `primitive_shards` as mesh files in three formats, with samples.json.

    Odd samples carry an explicit class, even ones only their caption as the prompt; one more
    file, `corrupt.glb`, is not a mesh.
    """
    folder = tmp_path_factory.mktemp("generated")
    entries = []
    for i, item in enumerate(iter_primitives(24, seed=0)):
        name = f"{i:04d}.{('glb', 'obj', 'ply')[i % 3]}"
        item.mesh.export(folder / name)
        entries.append(
            {"file": name, "prompt": item.caption, **({"class": item.meta["class"]} if i % 2 else {})}
        )
    (folder / "samples.json").write_text(json.dumps({"samples": entries, "settings": {"sampler": "copies"}}))
    (folder / "corrupt.glb").write_bytes(b"\x00not a mesh" * 64)
    return folder


def markdown_table(md: str, heading: str) -> list[list[str]]:
    """The body rows of the table under a `## heading` line, as lists of cells."""
    block = md.split(f"## {heading}", 1)[1].split("\n\n")[1]  # the table follows the heading's blank line
    lines = [line for line in block.splitlines() if not line.startswith("|---")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines][1:]


def test_reconstruction_writes_rows_and_means(autoencoder_ckpt, primitive_shards, tmp_path):
    out = tmp_path / "eval"
    args = ["--resolution", "32", "--limit", "4", "--points", "256"]
    assert (
        native3d(
            [
                "evaluate",
                "--ckpt",
                str(autoencoder_ckpt),
                "--data",
                str(primitive_shards),
                "--out",
                str(out),
                *args,
            ]
        )
        == 0
    )
    data = json.loads((out / "metrics.json").read_text())
    first = [s["__key__"] for _, s in zip(range(4), iter_samples(primitive_shards))]
    assert data["kind"] == "reconstruction" and [r["id"] for r in data["rows"]] == first
    summary, rows = data["summary"], data["rows"]
    assert summary["num_objects"] == 4 and summary["num_meshed"] + summary["num_no_surface"] == 4
    assert summary["volume_iou"] == pytest.approx(np.mean([r["volume_iou"] for r in rows]))
    meshed = [r for r in rows if r["status"] == "ok"]
    assert [f["id"] for f in data["failures"]] == [r["id"] for r in rows if r["status"] == "no_surface"]
    for name in ("chamfer_l1", "f_score", "normal_consistency"):
        expected = np.mean([r[name] for r in meshed]) if meshed else None
        assert summary[name] == pytest.approx(expected)
    assert all(
        0 <= r["volume_iou"] <= 1 and r["chamfer_l1"] > 0 and 0 <= r["normal_consistency"] <= 1
        for r in meshed
    )
    settings = data["settings"]
    assert settings["chamfer_convention"] == "l1" and settings["metrics"]["chamfer_l1"]["convention"] == "l1"
    assert (
        settings["fscore_threshold"] == 0.02
        and settings["resolution"] == 32
        and settings["mesh_points"] == 256
    )

    md = (out / "metrics.md").read_text()
    assert [row[0] for row in markdown_table(md, "Objects")] == first
    assert dict(row[:2] for row in markdown_table(md, "Summary"))["num_objects"] == "4"
    assert not list(out.glob("*.tmp")), "reports are written under a temporary name, then renamed"


def oracle(sample: dict, shape: dict | None = None, mesh: bool = True) -> Reconstruction:
    """A reconstruction of `sample` that decodes exactly to `shape` (by default `sample` itself):
    its stored uniform-query SDF and the marching-cubes mesh of its stored SDF grid."""
    shape = sample if shape is None else shape
    pred = shape["query.npy"][: len(shape["query.npy"]) // 2, 3].astype(np.float32)
    return Reconstruction(
        sample["__key__"], sample, pred, reference_mesh(shape) if mesh else None, None if mesh else "none"
    )


def test_a_perfect_reconstruction_beats_a_wrong_one_and_no_surface_is_counted(primitive_shards):
    a, b, c = (s for _, s in zip(range(3), iter_samples(primitive_shards)))
    recs = [oracle(a), oracle(b, mesh=False), oracle(c), oracle(a, shape=c)]
    rows, failures, _ = score_reconstructions(recs, points=512, fscore_threshold=0.05)
    assert [f["id"] for f in failures] == [b["__key__"]] and failures[0]["reason"] == "no_surface"
    assert rows[1]["status"] == "no_surface" and rows[1]["volume_iou"] == 1.0 and "chamfer_l1" not in rows[1]
    for row in (rows[0], rows[2]):
        # 512 reference points bound the Chamfer-L1 of a perfect mesh to about half their spacing.
        assert row["volume_iou"] == 1.0 and row["chamfer_l1"] < 0.08 and row["normal_consistency"] > 0.8
    perfect, wrong = rows[0], rows[3]
    assert wrong["volume_iou"] < 0.9 and wrong["chamfer_l1"] > 1.5 * perfect["chamfer_l1"]
    assert (
        wrong["f_score"] < perfect["f_score"] and wrong["normal_consistency"] < perfect["normal_consistency"]
    )
    summary = summarize(rows)
    assert summary["num_objects"] == 4 and summary["num_no_surface"] == 1 and summary["num_meshed"] == 3
    assert summary["chamfer_l1"] == pytest.approx(np.mean([rows[i]["chamfer_l1"] for i in (0, 2, 3)]))


def test_copies_of_the_reference_cover_it_and_match_their_prompts(
    reference_meshes, primitive_shards, tmp_path
):
    out = tmp_path / "eval"
    argv = [
        "evaluate",
        "--meshes",
        str(reference_meshes),
        "--reference",
        str(primitive_shards),
        "--out",
        str(out),
        "--points",
        "512",
    ]
    assert native3d(argv) == 0
    data = json.loads((out / "metrics.json").read_text())
    summary = data["summary"]
    assert summary["num_samples"] == 24 and summary["num_reference"] == 24
    assert summary["num_failed"] == 1 and data["failures"][0]["id"] == "corrupt.glb"
    assert data["failures"][0]["reason"] == "unreadable_file"
    assert summary["cov"] == 1.0 and summary["mmd"] < 0.07
    assert summary["1-nna"] < 0.2, "copies of the references are each other's nearest neighbours"
    assert summary["prompt_accuracy"] == 1.0 and summary["num_prompted"] == 24
    keys = [s["__key__"] for s in iter_samples(primitive_shards)]
    assert [r["nearest_reference"] for r in data["rows"]] == keys, (
        "each copy's nearest reference is its original"
    )
    assert {r["class_from"] for r in data["rows"]} == {"class", "prompt"}
    settings = data["settings"]
    assert (
        settings["chamfer_convention"] == "l1"
        and settings["points"] == 512
        and "[-0.9, 0.9]" in settings["normalization"]
    )
    assert settings["sampler_settings"] == {"sampler": "copies"}
    assert "corrupt.glb" in (out / "metrics.md").read_text()


def spheres(radii: torch.Tensor, points: int = 64) -> PointSet:
    directions = torch.nn.functional.normalize(torch.randn(len(radii), points, 3), dim=-1)
    return PointSet([str(i) for i in range(len(radii))], directions * radii[:, None, None], [{}] * len(radii))


def test_one_nna_of_samples_drawn_like_the_references_is_near_a_half_against_many_more_references():
    torch.manual_seed(0)
    samples, refs = spheres(0.3 + 0.6 * torch.rand(24)), spheres(0.3 + 0.6 * torch.rand(192))
    d_sr, stats = distribution_metrics(samples, refs, "chamfer", seed=0)
    assert d_sr.value.shape == (24, 192), "MMD and COV see every reference"
    # Against all 192 references (a reference's nearest neighbour is then another reference almost
    # always) these sets read 0.78-0.82; 24 against 24 of them, 0.33-0.63 over six draws.
    assert 0.25 <= stats["1-nna"].mean() <= 0.75
    far = spheres(2.0 + torch.rand(24))
    assert distribution_metrics(far, refs, "chamfer", seed=0)[1]["1-nna"].mean() == 1.0


def test_exact_emd_a_wrong_prompt_and_samples_without_a_mesh(primitive_shards, tmp_path):
    items = list(iter_primitives(3, seed=0))
    for i, item in enumerate(items):
        item.mesh.export(tmp_path / f"{i}.obj")
    wrong = next(c for c in ("box", "sphere", "torus") if c != items[0].meta["class"])
    entries = [
        {"file": "0.obj", "class": wrong},
        {"file": "1.obj", "prompt": "something"},
        {"index": 7, "file": None, "prompt": "a mug", "error": "no surface: ..."},
        {"file": "gone.glb"},
    ]
    (tmp_path / "samples.json").write_text(json.dumps({"samples": entries, "settings": {}}))
    report = evaluate_generation(tmp_path, primitive_shards, points=64, metric="emd")
    assert (
        report.settings["emd_backend"] == "exact" and report.settings["metrics"]["mmd"]["distance"] == "emd"
    )
    assert report.summary["num_samples"] == 3 and report.summary["num_prompted"] == 1
    assert report.summary["prompt_accuracy"] == 0.0 and report.summary["num_unlabelled"] == 2
    assert [(f["id"], f["reason"]) for f in report.failures] == [
        ("sample 7 (a mug)", "no_file"),
        ("gone.glb", "missing_file"),
    ]
    assert report.summary["num_failed"] == 2


def test_an_empty_folder_or_reference_is_a_clear_error(primitive_shards, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no mesh files"):
        evaluate_generation(tmp_path / "empty", primitive_shards)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.obj").write_text("v 0 0 0\n")
    with pytest.raises(ValueError, match="none of 1 mesh files could be read"):
        evaluate_generation(tmp_path / "bad", primitive_shards, points=64)
    with pytest.raises(FileNotFoundError, match="index.json"):
        evaluate_generation(tmp_path / "bad", tmp_path / "empty")
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "index.json").write_text(
        json.dumps({"schema_version": 1, "sizes": {}, "shards": []})
    )
    with pytest.raises(ValueError, match="holds no samples"):
        evaluate_generation(tmp_path / "bad", tmp_path / "none")


def test_a_prompt_names_its_class_only_when_one_class_word_occurs():
    classes = {"mug", "table", "chair"}
    assert prompted_class({"prompt": "A tall mug with a handle"}, classes) == ("mug", "prompt")
    assert prompted_class({"prompt": "a chair at a table"}, classes) == (None, None)
    assert prompted_class({"prompt": "a smug face"}, classes) == (None, None)
    assert prompted_class({"class": "lamp", "prompt": "a mug"}, classes) == ("lamp", "class")


def test_nearest_class_by_min_and_mean():
    from native3d.evaluation.generation import nearest_classes

    d_sr = torch.tensor([[0.1, 0.9, 0.4, 0.4]])  # one sample; references a, a, b, b
    assert nearest_classes(d_sr, ["a", "a", "b", "b"], "min") == ["a"]
    assert nearest_classes(d_sr, ["a", "a", "b", "b"], "mean") == ["b"]


def test_the_rule_names_the_class_of_shapes_that_are_in_the_reference(primitive_shards, tmp_path):
    import os

    from native3d.data.shards import load_index
    from native3d.evaluation.generation import nearest_class_accuracy

    # Against itself every shape's nearest reference is itself (another subset of its points): all right.
    assert nearest_class_accuracy(primitive_shards, primitive_shards, points=128) == 1.0
    # A reference of the first shard's shapes only: a shape of a class it lacks is named wrongly.
    index = load_index(primitive_shards)
    first = index.info["shards"][0]
    url = os.path.relpath(primitive_shards / first["url"], tmp_path)
    info = {**index.info, "shards": [{**first, "url": url}], "num_samples": first["count"]}
    (tmp_path / "index.json").write_text(json.dumps(info))
    in_reference = {s["meta.json"]["class"] for s in iter_samples(tmp_path)}
    shapes = [s["meta.json"]["class"] for s in iter_samples(primitive_shards)]
    could_be_right = sum(c in in_reference for c in shapes) / len(shapes)
    accuracy = nearest_class_accuracy(primitive_shards, tmp_path, points=128)
    assert first["count"] / len(shapes) <= accuracy <= could_be_right < 1.0
