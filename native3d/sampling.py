"""`native3d sample`: a latent-diffusion checkpoint to meshes, renders, a contact sheet and settings.

Prompts (or images) are repeated `num` times each; every sample is generated in batches, its
latent decoded as an implicit SDF (coarse-to-fine by default) and meshed with marching cubes.
A latent that decodes to no surface is reported and writes no file.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import trimesh
from PIL import Image

from native3d.autoencoders.meshing import decode_mesh
from native3d.diffusion.samplers import resolve_sampler
from native3d.errors import InputError
from native3d.files import atomic_path, write_json
from native3d.geometry.marching_cubes import NoSurfaceError
from native3d.geometry.render import fixed_cameras, render_views
from native3d.nn.modulation import broadcast_batch
from native3d.options import FORMATS
from native3d.training.diffusion import load_diffusion

log = logging.getLogger(__name__)


@dataclass
class SampleSettings:
    ckpt: str
    prompts: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    num: int = 1
    # None: the checkpoint's own (its YAML's `sampler`, `sample_steps`, `guidance`); `resolved` names them
    sampler: str | None = None
    steps: int | None = None
    guidance: float | None = None
    resolution: int = 128
    seed: int = 0
    batch_size: int = 8
    format: str = "glb"
    coarse_to_fine: bool = True
    device: str = "cpu"


def resolved(settings: SampleSettings, model) -> SampleSettings:
    """`settings` with what will run named: the sampler (checked against the model's objective), its
    steps and guidance, the model's own where the settings leave them out."""
    return replace(
        settings,
        sampler=resolve_sampler(settings.sampler or model.sampler, model.objective.schedule),
        steps=settings.steps or model.hparams.sample_steps,
        guidance=model.hparams.guidance if settings.guidance is None else settings.guidance,
    )


def settings_from_args(args) -> SampleSettings:
    """`SampleSettings` from parsed `add_sampling_arguments` options plus --ckpt, --resolution, --seed, --batch-size, --device."""
    return SampleSettings(
        ckpt=args.ckpt,
        prompts=args.prompt,
        images=args.image,
        num=args.num,
        sampler=args.sampler,
        steps=args.steps,
        guidance=args.guidance,
        resolution=args.resolution,
        seed=args.seed,
        batch_size=args.batch_size,
        format=args.format,
        coarse_to_fine=not args.dense,
        device=args.device,
    )


def conditions(model, settings: SampleSettings) -> list[tuple[str, dict | None]]:
    """(label, cond of batch 1) per requested condition; one unconditional entry without any."""
    if not model.conditional:
        if settings.prompts or settings.images:
            raise InputError(f"{settings.ckpt} is an unconditional model; it takes no --prompt or --image")
        return [("unconditional", None)]
    from native3d.conditioning.condition import ImageConditioner

    if isinstance(model.conditioner, ImageConditioner):
        if settings.prompts or not settings.images:
            raise InputError(
                f"{settings.ckpt} is conditioned on images; give --image PNG (or a mesh file to render)"
            )
        return [(Path(p).stem, image_condition(model, p)) for p in settings.images]
    if settings.images or not settings.prompts:
        raise InputError(f"{settings.ckpt} is conditioned on text; give --prompt TEXT")
    return [(prompt, model.conditioner.encode_texts([prompt])) for prompt in settings.prompts]


def image_condition(model, path: str) -> dict:
    from native3d.conditioning.image import image_from_path

    size = getattr(model.conditioner.encoder, "image_size", 224)
    image = torch.tensor(image_from_path(path, size))[None].to(model.device)  # (1, H, W, 3)
    return model.conditioner.encode_images(image)


def sample_to_folder(settings: SampleSettings, out: str | os.PathLike, model=None) -> dict:
    """Samples, meshes and renders every requested condition into `out`; returns what `samples.json` holds.

    `model` is the loaded checkpoint when the caller has it already (else `settings.ckpt` is loaded).
    """
    if settings.format not in FORMATS:
        raise InputError(f"--format must be one of {FORMATS}, got {settings.format!r}")
    model = model if model is not None else load_diffusion(settings.ckpt, settings.device)
    settings = resolved(settings, model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator(settings.device).manual_seed(settings.seed)
    records, renders = [], []
    start = time.perf_counter()
    for label, cond in conditions(model, settings):
        for first in range(0, settings.num, settings.batch_size):
            count = min(settings.batch_size, settings.num - first)
            latents = model.generate(
                count,
                None if cond is None else broadcast_batch(cond, count),
                settings.steps,
                settings.guidance,
                generator,
                settings.sampler,
            )
            for latent in latents:
                record, render = write_sample(model, latent[None], label, len(records), settings, out)
                records.append(record)
                if render is not None:
                    renders.append(render)
    seconds = time.perf_counter() - start
    if renders:
        save_png(contact_sheet(renders), out / "contact_sheet.png")
    summary = {
        "settings": asdict(settings),
        "samples": records,
        "seconds": seconds,
        "seconds_per_sample": seconds / max(1, len(records)),
    }
    write_json(out / "samples.json", summary)
    return summary


def write_sample(
    model, latent, label: str, index: int, settings: SampleSettings, out: Path
) -> tuple[dict, np.ndarray | None]:
    name = f"{index:04d}_{slug(label)}"
    record = {"index": index, "prompt": label, "file": None, "render": None}
    try:
        vertices, faces = decode_mesh(model.autoencoder, latent, settings.resolution, settings.coarse_to_fine)
    except NoSurfaceError as error:
        log.warning("sample %s decodes to no surface (%s); no mesh written", name, error)
        record["error"] = f"no surface: {error}"
        return record, None
    mesh = trimesh.Trimesh(vertices, faces, process=False)
    mesh_path = out / f"{name}.{settings.format}"
    with atomic_path(mesh_path) as tmp:
        mesh.export(tmp, file_type=settings.format)
    render = render_views(mesh, fixed_cameras(1), 256)[0]
    save_png(render, out / f"{name}.png")
    record.update(file=mesh_path.name, render=f"{name}.png", vertices=len(vertices), faces=len(faces))
    return record, render


def contact_sheet(images: list[np.ndarray], columns: int = 8) -> np.ndarray:
    height, width = images[0].shape[:2]
    rows = -(-len(images) // columns)
    sheet = np.full((rows * height, min(columns, len(images)) * width, 3), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        sheet[r * height : (r + 1) * height, c * width : (c + 1) * width] = image
    return sheet


def labelled_sheet(
    rows: list[tuple[str, list[dict], Path]], path: Path, cell: int = 128, label_width: int = 150
) -> None:
    """A PNG of sample renders: a row per (label, `samples.json` records, their folder), each cell
    captioned with its class or prompt, and "no surface" where a sample did not mesh."""
    from PIL import ImageDraw

    columns = max(len(records) for _, records, _ in rows)
    sheet = Image.new("RGB", (label_width + columns * cell, len(rows) * (cell + 14)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (label, records, folder) in enumerate(rows):
        top = r * (cell + 14)
        draw.text((6, top + cell // 2), label, fill="black")
        for c, record in enumerate(records):
            left = label_width + c * cell
            if record.get("render"):
                render = Image.open(folder / record["render"]).convert("RGB").resize((cell, cell))
                sheet.paste(render, (left, top))
            else:
                draw.text((left + 6, top + cell // 2), "no surface", fill="gray")
            draw.text((left + 4, top + cell), (record.get("class") or record["prompt"])[:20], fill="black")
    save_png(np.asarray(sheet), path)


def save_png(image: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def slug(text: str, length: int = 40) -> str:
    cleaned = "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")
    return "_".join(filter(None, cleaned.split("_")))[:length] or "sample"
