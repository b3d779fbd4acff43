"""The build job end to end on real meshes: shards, ledger, failures, resume, job splitting, index."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from data_prep.build import BuildConfig, job_of, run_build
from data_prep.cli import main as prep
from data_prep.cli import size_arguments
from data_prep.index import build_index
from data_prep.ledger import Ledger, ledger_path
from data_prep.report import build_report
from data_prep.sources.local import iter_local
from native3d.data.schema import SCHEMA_VERSION, SchemaError, array_keys, expected_shape
from native3d.data.shards import AtomicShardWriter, encode_sample, iter_samples, load_index

BROKEN = {"empty.stl", "corrupt.glb", "points.ply"}


def fingerprint(folder: Path) -> dict[str, str]:
    """id -> hash of the sample's arrays, for every sample in a built and indexed folder."""
    build_index(folder)
    prints = {}
    keys = array_keys(load_index(folder).sizes)
    for sample in iter_samples(folder):
        digest = hashlib.sha1()
        for key in keys:
            digest.update(sample[key].tobytes())
        assert sample["__key__"] not in prints, "a sample was written twice"
        prints[sample["__key__"]] = digest.hexdigest()
    return prints


def test_build_reads_back_and_names_failures(real_mesh_folder, tiny_sizes, tmp_path, capsys):
    out = tmp_path / "shards"
    code = prep(
        [
            "build",
            "--source",
            "local",
            "--root",
            str(real_mesh_folder),
            "--out",
            str(out),
            "--shard-size",
            "4",
            *size_arguments(tiny_sizes),
        ]
    )
    assert code == 0
    assert "6 ok, 3 failed" in capsys.readouterr().out
    ledger = Ledger(ledger_path(out, 0)).latest()
    failed = {Path(e["path"]).name: e for e in ledger.values() if e["status"] == "failed"}
    assert set(failed) == BROKEN
    assert all(e["reason"] and os.path.isabs(e["path"]) for e in failed.values())
    assert failed["points.ply"]["reason"] == "no_faces"
    index = build_index(out)
    assert [s["count"] for s in index["shards"]] == [4, 2]
    assert index["num_failed"] == 3 and index["sizes"]["grid_resolution"] == 16
    samples = list(iter_samples(out))
    assert len(samples) == 6
    assert "sharp.npy" in array_keys(tiny_sizes)
    for sample in samples:
        for key in array_keys(tiny_sizes):
            assert sample[key].shape == expected_shape(key, tiny_sizes)
        sdf = sample["sdf.npy"].astype(np.float32)
        assert sdf.min() < 0 < sdf.max(), "every real mesh has inside and outside grid points"
        meta = sample["meta.json"]
        assert meta["source"] == "local" and meta["normalization"]["scale"] > 0 and len(meta["cameras"]) == 1
        assert meta["sharp_source"] in ("edges", "curvature", "uniform") and "sharp" in meta["timings"]
        sharp = sample["sharp.npy"].astype(np.float32)
        np.testing.assert_allclose(np.linalg.norm(sharp[:, 3:], axis=1), 1.0, atol=2e-3)
    cube = next(s for s in samples if s["meta.json"]["relpath"] == "cube.obj")
    assert cube["meta.json"]["sharp_source"] == "edges" and cube["meta.json"]["sharp_edges"] == 12
    corner_axes = np.isclose(np.abs(cube["sharp.npy"][:, :3].astype(np.float32)), 0.9, atol=1e-3).sum(axis=1)
    assert (corner_axes >= 2).all(), "every sharp point of the cube lies on one of its edges"
    report = build_report(out)
    assert report["ok"] == 6 and sum(report["failure_reasons"].values()) == 3
    assert {"sdf_grid", "query", "surface", "sharp", "total"} <= set(report["timings"])


def test_two_jobs_cover_every_object_once(real_mesh_folder, tiny_sizes, tmp_path):
    items = list(iter_local(str(real_mesh_folder)))
    out = tmp_path / "split"
    for job in (0, 1):
        run_build(
            iter_local(str(real_mesh_folder)),
            BuildConfig(out=out, sizes=tiny_sizes, job_index=job, num_jobs=2),
        )
    per_job = [set(Ledger(ledger_path(out, job)).latest()) for job in (0, 1)]
    assert per_job[0].isdisjoint(per_job[1])
    assert per_job[0] | per_job[1] == {item.id for item in items}
    assert all(job_of(i, 2) == job for job in (0, 1) for i in per_job[job])
    assert build_index(out)["num_samples"] == 6


def test_kill_and_resume_yields_the_uninterrupted_set(real_mesh_folder, tiny_sizes, tmp_path):
    reference = tmp_path / "reference"
    run_build(iter_local(str(real_mesh_folder)), BuildConfig(out=reference, sizes=tiny_sizes, shard_size=2))
    expected = fingerprint(reference)

    out = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "data_prep",
        "build",
        "--source",
        "local",
        "--root",
        str(real_mesh_folder),
        "--out",
        str(out),
        "--shard-size",
        "2",
        *size_arguments(tiny_sizes),
    ]
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(out.glob("*.tar")) and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.05)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert list(out.glob("*.tar")), "the job was killed after its first shard"
    assert (
        prep(
            [
                "build",
                "--source",
                "local",
                "--root",
                str(real_mesh_folder),
                "--out",
                str(out),
                "--shard-size",
                "2",
                *size_arguments(tiny_sizes),
            ]
        )
        == 0
    )
    assert not list(out.glob("*.tmp"))
    assert fingerprint(out) == expected


def test_resume_redoes_a_shard_killed_between_ledger_and_rename(real_mesh_folder, tiny_sizes, tmp_path):
    out = tmp_path / "torn"
    config = BuildConfig(out=out, sizes=tiny_sizes, shard_size=2)
    run_build(iter_local(str(real_mesh_folder)), config)
    expected = fingerprint(out)
    # Undo the commit of the last shard after its ledger lines were written, and tear the ledger.
    last = sorted(out.glob("*.tar"))[-1]
    last.rename(last.with_name(last.name + ".tmp"))
    with open(ledger_path(out, 0), "a") as file:
        file.write('{"id": "torn')
    summary = run_build(iter_local(str(real_mesh_folder)), config)
    assert summary.ok == 2 and summary.skipped == 7
    assert fingerprint(out) == expected
    assert last.name not in {p.name for p in out.glob("*.tar")}, "a new shard index, never a reused name"


@pytest.mark.parametrize("change", [{"grid_resolution": 8}, {"sharp_points": 32}, {"sharp_angle": 30.0}])
def test_rerun_with_other_sizes_is_refused(real_mesh_folder, tiny_sizes, tmp_path, change):
    out = tmp_path / "sizes"
    run_build(iter_local(str(real_mesh_folder), limit=1), BuildConfig(out=out, sizes=tiny_sizes))
    other = BuildConfig(out=out, sizes=type(tiny_sizes)(**{**tiny_sizes.to_dict(), **change}))
    with pytest.raises(ValueError, match="sizes"):
        run_build(iter_local(str(real_mesh_folder), limit=1), other)


def test_sharp_points_0_writes_no_sharp_key_and_changes_no_other_array(
    real_mesh_folder, tiny_sizes, tmp_path
):
    without = replace(tiny_sizes, sharp_points=0)
    assert "sharp.npy" not in array_keys(without)
    arrays = {}
    for name, sizes in (("with", tiny_sizes), ("without", without)):
        out = tmp_path / name
        run_build(good_items(real_mesh_folder, 2), BuildConfig(out=out, sizes=sizes))
        build_index(out)
        members = [m for shard in out.glob("*.tar") for m in tarfile.open(shard).getnames()]
        assert any(m.endswith(".sharp.npy") for m in members) == (name == "with")
        samples = list(iter_samples(out))
        assert len(samples) == 2
        assert all(("sharp_source" in s["meta.json"]) == (name == "with") for s in samples)
        arrays[name] = {s["__key__"]: [s[k].tobytes() for k in array_keys(without)] for s in samples}
    assert arrays["with"] == arrays["without"], (
        "the sharp stage draws last: turning it off changes nothing else"
    )


def test_a_bad_sharp_angle_is_a_one_line_error(real_mesh_folder, tmp_path, capsys):
    code = prep(
        [
            "build",
            "--source",
            "local",
            "--root",
            str(real_mesh_folder),
            "--out",
            str(tmp_path / "x"),
            "--sharp-angle",
            "0",
        ]
    )
    assert code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "sharp_angle" in error
    assert not (tmp_path / "x").exists()


def good_items(folder: Path, count: int) -> list:
    return [item for item in iter_local(str(folder)) if Path(item.path).name not in BROKEN][:count]


def test_reader_names_shard_and_key_of_a_malformed_sample(real_mesh_folder, tiny_sizes, tmp_path):
    out = tmp_path / "bad"
    run_build(good_items(real_mesh_folder, 1), BuildConfig(out=out, sizes=tiny_sizes))
    build_index(out)
    good = next(iter(iter_samples(out)))
    shard = sorted(out.glob("*.tar"))[0]
    writer = AtomicShardWriter(shard)
    broken = {k: good[k] for k in (*array_keys(tiny_sizes), "caption.txt", "meta.json")}
    broken["sdf.npy"] = broken["sdf.npy"][:-1]
    writer.write(good["__key__"], broken)
    writer.commit()
    with pytest.raises(SchemaError, match=rf"{shard.name}.*sdf\.npy.*shape"):
        list(iter_samples(load_index(out)))
    # A set built with sharp points needs them in every sample.
    broken["sdf.npy"] = good["sdf.npy"]
    del broken["sharp.npy"]
    writer = AtomicShardWriter(shard)
    writer.write(good["__key__"], broken)
    writer.commit()
    build_index(out)  # the shard is shorter now: the index records its new size
    with pytest.raises(SchemaError, match=rf"{shard.name}.*missing key 'sharp\.npy'"):
        list(iter_samples(load_index(out)))


def test_sample_keys_with_dots_are_refused():
    with pytest.raises(ValueError, match="letters"):
        encode_sample("a.b", {})


def test_index_json_lists_urls_relative_to_itself(real_mesh_folder, tiny_sizes, tmp_path):
    out = tmp_path / "rel"
    run_build(good_items(real_mesh_folder, 2), BuildConfig(out=out, sizes=tiny_sizes))
    build_index(out)
    data = json.loads((out / "index.json").read_text())
    assert data["schema_version"] == SCHEMA_VERSION == 2 and all("/" not in s["url"] for s in data["shards"])
    assert data["sizes"]["sharp_points"] == tiny_sizes.sharp_points
    assert sum(s["count"] for s in data["shards"]) == 2
