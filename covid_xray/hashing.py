"""SHA-256 of a file: the one digest behind checkpoint sidecars, weights checks and the dataset manifest.

Standard library only, so that modules which must not import Keras (data, weights) can use it.
"""

from __future__ import annotations

import hashlib
import os

CHUNK_BYTES = 1 << 20  # read 1 MiB at a time: big checkpoints never sit in memory whole


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
