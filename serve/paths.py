"""The one rule for every file the server opens for a model: it stays inside that model's directory.

An entry (a version directory, ``model.onnx``, ``config.pbtxt``, a label or warm-up file, an
external-data location, ``baseline.json``, an uploaded file) is joined to the directory it is
relative to and resolved with every symlink followed, *before* anything opens it; if the result is
not inside the directory, loading fails with a ModelLoadError naming the entry as written. The
resolved path is never shown: it would tell a client about the server's file system.

What this does not cover: a file swapped for a symlink between the check and the open (whoever can
do that can already write the repository, and so push any model).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath

from serve.errors import ModelLoadError

MODEL_DIRECTORY = "model directory"
VERSION_DIRECTORY = "model version directory"


def confined(
    directory: Path,
    entry: str | PurePath,
    *,
    what: str,
    place: str = MODEL_DIRECTORY,
    shown: str | None = None,
    within: Path | None = None,
) -> Path:
    """``directory / entry`` with symlinks resolved; ModelLoadError when it is not inside ``within``
    (default ``directory``), itself resolved.

    ``what`` names the entry in the message ("label_filename", "version directory"), ``shown`` is the
    entry as the operator or client wrote it (default ``entry``), ``place`` names ``within``.
    """
    shown = str(entry) if shown is None else shown
    try:
        inside = Path(os.path.realpath(directory if within is None else within))
        resolved = Path(os.path.realpath(directory / entry))
    except (ValueError, OSError):  # a NUL byte in the name, or a name the OS refuses
        raise ModelLoadError(f"{what} {shown!r} is not a valid file name") from None
    if resolved != inside and not resolved.is_relative_to(inside):
        raise ModelLoadError(f"{what} '{shown}' is outside the {place}")
    return resolved
