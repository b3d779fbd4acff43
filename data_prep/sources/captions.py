"""Captions supplied by the user as a two-column CSV, shared by the sources that accept one.

The format is the one Cap3D ships for Objaverse (`uid,caption` rows, no header), and the same
with a header row such as `uid,caption` or `path,caption`. The first column is the key (a uid,
a relative path or a file stem, depending on the source); the rest of the row is the caption,
so a caption with an unquoted comma survives.
"""

from __future__ import annotations

import csv
import logging

log = logging.getLogger(__name__)

# A first row counts as a header only when both cells are names like these: a real first
# row has a uid or path in its first cell, which never matches.
_KEY_HEADERS = frozenset(
    {"uid", "id", "key", "path", "relpath", "file", "filename", "name", "stem", "object"}
)
_CAPTION_HEADERS = frozenset({"caption", "captions", "text", "description", "prompt"})


def read_captions_csv(path: str) -> dict[str, str]:
    """Reads `key,caption` rows into a dict; later rows win over earlier ones with the same key."""
    captions: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.reader(f)):
            if not row or not row[0].strip():
                continue
            if i == 0 and _is_header(row):
                continue
            captions[row[0].strip()] = ",".join(row[1:]).strip()
    log.info("read %d captions from %s", len(captions), path)
    return captions


def _is_header(row: list[str]) -> bool:
    return (
        len(row) >= 2
        and row[0].strip().lower() in _KEY_HEADERS
        and row[1].strip().lower() in _CAPTION_HEADERS
    )
