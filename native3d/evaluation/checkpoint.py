"""`native3d evaluate --ckpt LDM.ckpt --reference SHARDS`: a diffusion checkpoint's samples, scored.

Three steps, one function each: the conditions to ask for (`class_conditions`: without prompts or
images, a conditional model is asked for the reference's classes), the samples (`sample_once`:
`native3d sample` into `<out>/samples`, reused when its `samples.json` holds the same settings),
and their score (`score_samples`: `evaluate_generation` of that folder, plus what was requested).
The checkpoint is loaded once, for all three.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, replace
from pathlib import Path

from native3d.conditioning.condition import ImageConditioner
from native3d.data.shards import iter_samples
from native3d.errors import InputError
from native3d.evaluation.generation import (
    SAMPLES_FILE,
    ClassDistance,
    Distance,
    NoMeshError,
    evaluate_generation,
    read_samples_file,
)
from native3d.evaluation.report import EvaluationReport, json_safe
from native3d.files import write_json
from native3d.sampling import SampleSettings, resolved, sample_to_folder, save_png
from native3d.training.diffusion import load_diffusion

log = logging.getLogger(__name__)


def evaluate_checkpoint(
    settings: SampleSettings,
    reference: str | os.PathLike,
    out: str | os.PathLike,
    *,
    points: int = 2048,
    metric: Distance = "chamfer",
    class_distance: ClassDistance = "min",
    seed: int = 0,
) -> EvaluationReport:
    """Samples a diffusion checkpoint into `<out>/samples`, then scores that folder against `reference`.

    The summary adds `num_requested` and, when the samples have classes,
    `prompt_accuracy_of_requested`, which counts a sample that decodes to no surface as wrong
    (`prompt_accuracy` is over the meshed samples). The settings (sampler included) are in the
    report's `sampler_settings`.
    """
    out = Path(out)
    model = load_diffusion(settings.ckpt, settings.device)
    settings, labels = class_conditions(resolved(settings, model), model, reference, out / "conditions")
    requested = sample_once(settings, out / "samples", model, labels)
    report = score_samples(
        out / "samples",
        reference,
        requested,
        bool(labels),
        points=points,
        metric=metric,
        class_distance=class_distance,
        seed=seed,
    )
    report.inputs["ckpt"] = str(settings.ckpt)
    return report


def class_conditions(
    settings: SampleSettings, model, reference: str | os.PathLike, folder: Path
) -> tuple[SampleSettings, dict[str, str]]:
    """`settings` asking for the reference's classes, and {sample prompt label: class}.

    Only where `settings` names no prompt or image and the model is conditional: a text model is
    asked "a <class>" `settings.num` times per class, an image model once per reference view
    (`settings.num` objects per class, `reference_conditions`). Otherwise `settings` is unchanged.
    """
    if settings.prompts or settings.images or not model.conditional:
        return settings, {}
    image = isinstance(model.conditioner, ImageConditioner)
    conditions = reference_conditions(reference, settings.num, image, folder)
    labels = {Path(c).stem if image else c: cls for c, cls in conditions.items()}
    asked = {"images": list(conditions), "num": 1} if image else {"prompts": list(conditions)}
    return replace(settings, **asked), labels


def reference_conditions(
    reference: str | os.PathLike, per_class: int, image: bool, folder: Path
) -> dict[str, str]:
    """Conditions that the reference set's classes define: {prompt or PNG path: class}.

    Text: the prompt "a <class>" for every class (each sampled `per_class` times by the caller).
    Image: view 0 of the first `per_class` reference objects of every class, written as PNGs
    into `folder` (one sample each). The reference must carry a meta "class" per object.
    """
    conditions, taken = {}, {}
    for sample in iter_samples(reference):
        cls = sample["meta.json"].get("class")
        if cls is None:
            raise InputError(
                f"{reference}: object {sample['__key__']} has no meta 'class', so there are no class conditions; "
                "give --prompt or --image"
            )
        if not image:
            conditions[f"a {cls}"] = cls
            continue
        if taken.get(cls, 0) >= per_class:
            continue
        if "views.npy" not in sample:
            raise InputError(
                f"{reference}: object {sample['__key__']} has no rendered views to condition on; give --image"
            )
        taken[cls] = taken.get(cls, 0) + 1
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{cls}-{sample['__key__']}.png"
        save_png(sample["views.npy"][0], path)
        conditions[str(path)] = cls
    return conditions


def sample_once(settings: SampleSettings, folder: Path, model, labels: dict[str, str]) -> int:
    """`native3d sample` into `folder` unless it holds samples of these settings; the number requested.

    Each sample is tagged with the class of its condition (`labels`), for prompt accuracy.
    """
    listed = folder / SAMPLES_FILE
    if listed.is_file():
        record = json.loads(listed.read_text())
        if record.get("settings") == json_safe(asdict(settings)):
            return len(record["samples"])
    shutil.rmtree(folder, ignore_errors=True)
    record = sample_to_folder(settings, folder, model)
    if labels:
        for entry in record["samples"]:
            entry["class"] = labels[entry["prompt"]]
        write_json(listed, record)
    return len(record["samples"])


def score_samples(
    folder: Path, reference: str | os.PathLike, requested: int, labelled: bool, **scoring
) -> EvaluationReport:
    """`evaluate_generation` of `folder` (`scoring` are its options), counting what was requested.

    A folder where nothing decoded to a surface has nothing to measure: its report says so, and
    every prompted sample is wrong.
    """
    try:
        report = evaluate_generation(folder, reference, **scoring)
    except NoMeshError as error:
        log.warning("%s", error)
        summary = {"num_samples": 0, "num_failed": requested, "error": str(error)}
        if labelled:
            summary["prompt_accuracy_of_requested"] = 0.0
        inputs = {"meshes": str(folder), "reference": str(reference)}
        settings = {"sampler_settings": read_samples_file(folder)[2]}
        report = EvaluationReport("generation", inputs, settings, summary, failures=error.failures)
    summary = report.summary
    summary["num_requested"] = requested
    if summary.get("num_prompted"):
        summary["prompt_accuracy_of_requested"] = (
            summary["prompt_accuracy"] * summary["num_prompted"] / requested
        )
    return report
