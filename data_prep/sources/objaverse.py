"""Objaverse (1.0) objects through the `objaverse` package's own loading code.

The package keeps its cache location in two module globals; `use_objaverse_cache` points them
at a chosen folder. Inside it the package expects (and, with network, downloads into):

    <cache_dir>/hf-objaverse-v1/object-paths.json.gz     uid -> "glbs/<dir>/<uid>.glb"
    <cache_dir>/hf-objaverse-v1/glbs/<dir>/<uid>.glb     the objects
    <cache_dir>/hf-objaverse-v1/metadata/<dir>.json.gz   uid -> Sketchfab annotations
    <cache_dir>/hf-objaverse-v1/lvis-annotations.json.gz LVIS category -> [uid, ...]

A cache laid out like this (copied from a machine with network, or built by a test) is read
without any download. Objects are yielded in sorted uid order; the id is the uid.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator
from itertools import islice

import objaverse

from data_prep.sources import MeshItem
from data_prep.sources.captions import read_captions_csv
from native3d.errors import InputError

log = logging.getLogger(__name__)

# Objects are resolved (and, with network, downloaded) a batch at a time, so an iterator over
# the whole dataset starts yielding before every GLB is on disk.
BATCH_SIZE = 1000
MAX_DESCRIPTION_CHARS = 200


def use_objaverse_cache(cache_dir: str) -> str:
    """Points the objaverse package at `cache_dir` (its `~/.objaverse` equivalent).

    The package reads `objaverse.BASE_PATH` and `objaverse._VERSIONED_PATH` at call time, so
    setting them here redirects every later call in this process (and in forked download
    workers). Nothing is restored afterwards: the last cache set is the one in use.
    Returns the versioned folder, `<cache_dir>/hf-objaverse-v1`.
    """
    base = os.path.abspath(os.path.expanduser(cache_dir))
    objaverse.BASE_PATH = base
    objaverse._VERSIONED_PATH = os.path.join(base, "hf-objaverse-v1")
    return objaverse._VERSIONED_PATH


def iter_objaverse(
    cache_dir: str,
    uids_file: str | None = None,
    lvis_categories: Iterable[str] | None = None,
    limit: int | None = None,
    captions_csv: str | None = None,
    download_processes: int = 1,
) -> Iterator[MeshItem]:
    """Yields Objaverse objects in sorted uid order.

    Selection: the uids listed in `uids_file` (one per line, `#` comments allowed), else the
    uids of the given LVIS categories, else every uid; both filters apply when both are given.
    `limit` keeps the first N of the sorted selection. Captions come from `captions_csv`
    (`uid,caption`, e.g. Cap3D) when given, else from the annotations' name, tags and description.
    """
    use_objaverse_cache(cache_dir)
    uids, categories = _select_uids(uids_file, lvis_categories)
    uids = uids[:limit] if limit is not None else uids
    captions = read_captions_csv(captions_csv) if captions_csv else None
    for batch in _batches(uids, BATCH_SIZE):
        annotations = objaverse.load_annotations(batch)
        paths = objaverse.load_objects(batch, download_processes=download_processes)
        for uid in batch:
            if uid not in paths:
                log.warning("objaverse uid %s has no object file; skipped", uid)
                continue
            yield _item(uid, paths[uid], annotations.get(uid, {}), captions, categories.get(uid))


def _select_uids(
    uids_file: str | None, lvis_categories: Iterable[str] | None
) -> tuple[list[str], dict[str, str]]:
    """The sorted selected uids (only those the dataset knows), and uid -> LVIS category."""
    known = set(objaverse.load_uids())
    selected = set(read_uids_file(uids_file)) if uids_file else set(known)
    categories: dict[str, str] = {}
    if lvis_categories is not None:
        categories = _lvis_categories(list(lvis_categories))
        selected &= set(categories)
    missing = selected - known
    if missing:
        log.warning("%d selected uids are not in objaverse's object paths; skipped", len(missing))
    return sorted(selected & known), categories


def _lvis_categories(wanted: list[str]) -> dict[str, str]:
    """uid -> its LVIS category, for the wanted categories (a uid in two keeps the first)."""
    lvis = objaverse.load_lvis_annotations()
    unknown = [c for c in wanted if c not in lvis]
    if unknown:
        raise InputError(f"unknown LVIS categories: {unknown}")
    categories: dict[str, str] = {}
    for category in wanted:
        for uid in lvis[category]:
            categories.setdefault(uid, category)
    return categories


def read_uids_file(path: str) -> list[str]:
    """One uid per line; blank lines and `#` comments are ignored, a `.glb` suffix is dropped."""
    with open(path, encoding="utf-8") as f:
        lines = (line.split("#", 1)[0].strip() for line in f)
        return [line.removesuffix(".glb") for line in lines if line]


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


def _item(
    uid: str, path: str, annotation: dict, captions: dict[str, str] | None, category: str | None
) -> MeshItem:
    caption = captions.get(uid, "") if captions is not None else annotation_caption(annotation)
    meta = {
        "source": "objaverse",
        "license": annotation.get("license"),
        "name": annotation.get("name", ""),
        "uri": annotation.get("uri", ""),
        "tags": _tag_names(annotation),
    }
    if category is not None:
        meta["lvis_category"] = category
    return MeshItem(id=uid, path=os.path.abspath(path), caption=caption, meta=meta)


def annotation_caption(annotation: dict) -> str:
    """One readable caption from the Sketchfab name, tags and (shortened) description."""
    name = _clean(annotation.get("name", ""))
    tags = ", ".join(_tag_names(annotation))
    description = _shorten(_clean(annotation.get("description") or ""), MAX_DESCRIPTION_CHARS)
    parts = [name.rstrip(".") + "." if name else "", f"Tags: {tags}." if tags else "", description]
    return " ".join(p for p in parts if p)


def _tag_names(annotation: dict) -> list[str]:
    return [t["name"] for t in annotation.get("tags", []) if isinstance(t, dict) and t.get("name")]


def _clean(text: str) -> str:
    """Drops URLs and collapses whitespace: descriptions are often credits and links."""
    return re.sub(r"\s+", " ", re.sub(r"https?://\S+", "", text)).strip()


def _shorten(text: str, max_chars: int) -> str:
    """The text cut at a sentence (or word) boundary at most `max_chars` long."""
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    end = cut.rfind(". ")
    return cut[: end + 1] if end > 0 else cut.rsplit(" ", 1)[0] + "..."
