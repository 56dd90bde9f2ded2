"""Files sent with a repository load request ("file:<path>" parameters), written where a model loads them.

Uploaded files never go into the repository (it may be read-only, and is the operator's): a private
directory (mode 0700) per load is that model's directory, and nothing leaves it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from serve.errors import InvalidInput, ModelLoadError
from serve.paths import confined


def write_uploaded_files(name: str, files: dict[str, bytes]) -> Path:
    """A new private directory holding ``files`` (relative path -> content); InvalidInput names a
    path that leaves it, names no file or cannot be written (and nothing is left behind)."""
    base = Path(tempfile.mkdtemp(prefix=f"serve-{name}-")).resolve()
    try:
        for rel, content in files.items():
            try:
                target = confined(base, rel, what="file parameter", shown=f"file:{rel}")
            except ModelLoadError as exc:
                raise InvalidInput(exc.message) from None
            if target == base:
                raise InvalidInput(f"file parameter 'file:{rel}' names no file")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)
            except OSError as exc:  # a name too long, or a file where another needs a directory
                reason = exc.strerror or type(exc).__name__
                raise InvalidInput(f"file parameter 'file:{rel}' cannot be written: {reason}") from None
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    return base
