"""Files written atomically: under a temporary name next to the target, then renamed onto it.

`os.replace` within one folder is atomic, so a reader, or a rerun after a crash, finds the old file
or the whole new one, never a part. A temporary file is `<name>.tmp`; one left by a killed writer
is never mistaken for the target.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temporary(path: str | os.PathLike) -> Path:
    """The temporary name a file is written under before it becomes `path`."""
    path = Path(path)
    return path.with_name(path.name + ".tmp")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path to write to; it becomes `path` when the block ends, and is removed if it raises.

    Writers that pick a format by suffix must be told the format (the temporary name ends in `.tmp`).
    """
    tmp = temporary(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)


def write_json(path: str | os.PathLike, data: object, sort_keys: bool = False) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")
