"""Where a model's files are under ``--model-repository DIR``.

Without ``--model-name``, DIR is a Triton repository: ``DIR/<model>/config.pbtxt``,
``DIR/<model>/baseline.json``, ``DIR/<model>/<version>/model.onnx``.

With ``--model-name NAME`` the server serves exactly one model, NAME, and reads DIR as the
first of these that fits (KServe's runtime passes ``--model-name={{.Name}}`` and the
directory its storage initializer filled, ``/mnt/models``):

1. **a bare model directory**: DIR holds the model file itself — the file DIR/config.pbtxt
   names in ``default_model_filename``, else ``model.onnx``, else the only ``*.onnx`` in DIR.
   It is version 1; DIR/config.pbtxt and DIR/baseline.json are optional.
2. **one model's directory in Triton layout**: DIR has numbered version directories
   (DIR/1/model.onnx, …) and optionally DIR/config.pbtxt and DIR/baseline.json.
3. **a Triton repository**: the model is DIR/NAME; the other models in DIR are not served.

In the first two, the directory does not name the model: a ``name`` in its config.pbtxt that
differs from NAME is replaced by NAME (logged), as the InferenceService's name is the one
clients call. In a Triton repository it must match, as without ``--model-name``.

Every path is built from DIR, a validated model name, an integer version and a file name
that may not be absolute or contain ``..``; each is then resolved, symlinks included, and must stay
inside the model's directory (serve/paths.py), which must itself stay inside DIR.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path, PurePath

from serve.errors import InvalidInput, ModelLoadError, ServeError
from serve.paths import MODEL_DIRECTORY, confined
from serve.repository import config_file

BARE_VERSION = 1
# Versions are non-negative integers written in at most this many ASCII digits (int64's range
# needs 19); a longer string is no version, and int() of one with thousands of digits raises.
MAX_VERSION_DIGITS = 19


def is_version_number(text: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts '²', '١' and '１', which are no version."""
    return 0 < len(text) <= MAX_VERSION_DIGITS and text.isascii() and text.isdigit()


def parse_version(text: str) -> int:
    """A model version a client named (never ""): every route and RPC reads one through here, so
    that a malformed one is the same INVALID_ARGUMENT / HTTP 400 everywhere, as in Triton."""
    if not is_version_number(text):
        shown = text if len(text) <= 32 else text[:32] + "…"
        raise InvalidInput(
            f"model version {shown!r} is not a version: versions are non-negative integers written in ASCII "
            f"digits (at most {MAX_VERSION_DIGITS}), such as '1'; leave the version out for the model's default"
        )
    return int(text)


@dataclass(frozen=True, slots=True)
class ModelLayout:
    directory: Path  # config.pbtxt and baseline.json are here
    bare_file: str | None = None  # a bare model directory: version 1 is directory/bare_file
    named_by_directory: bool = True  # False: --model-name names the model, not the directory

    def inside(self, root: Path) -> ModelLayout:
        """This layout with its directory resolved; ModelLoadError when that leaves ``root``.

        ``directory`` is always ``root`` or a path under it (a symlink may still lead elsewhere)."""
        relative = self.directory.relative_to(root)
        directory = confined(root, relative, what="model directory", place="model repository")
        return replace(self, directory=directory)

    def versions(self) -> list[int]:
        if self.bare_file is not None:
            return [BARE_VERSION]
        return sorted(int(p.name) for p in self.directory.iterdir() if p.is_dir() and is_version_number(p.name))

    def version_dir(self, version: int) -> Path:
        """Where ``version``'s files are (resolved): the directory itself for a bare model."""
        if self.bare_file is not None:
            return self.directory
        return confined(self.directory, str(version), what="version directory")

    def model_file(self, version: int, filename: str) -> Path:
        """The ONNX file of ``version`` (resolved); ``filename`` is config.pbtxt's ``default_model_filename``."""
        name = filename or self.bare_file or config_file.DEFAULT_MODEL_FILENAME
        if not _inside(name):
            raise ModelLoadError(f"default_model_filename {name!r} leaves the model directory")
        what = "default_model_filename" if filename else "model file"
        shown = PurePath(name) if self.bare_file is not None else PurePath(str(version), name)
        return confined(self.directory, shown, what=what, place=MODEL_DIRECTORY)


def _inside(filename: str) -> bool:
    relative = PurePath(filename)
    return not relative.is_absolute() and ".." not in relative.parts


def triton_model(model_dir: Path) -> ModelLayout:
    return ModelLayout(model_dir)


def _bare_file(directory: Path) -> str | None:
    try:
        configured = config_file.read_config(directory)[0].default_model_filename
    except ServeError:
        configured = ""  # a broken config.pbtxt is reported when the model loads
    if configured:
        return configured if _inside(configured) and (directory / configured).is_file() else None
    if (directory / config_file.DEFAULT_MODEL_FILENAME).is_file():
        return config_file.DEFAULT_MODEL_FILENAME
    candidates = [p.name for p in directory.glob("*.onnx") if p.is_file()]
    return candidates[0] if len(candidates) == 1 else None


def single_model(root: Path, name: str) -> ModelLayout:
    """Where ``--model-name name`` finds its model under ``--model-repository root`` (module docstring)."""
    bare = _bare_file(root)
    if bare is not None:
        return ModelLayout(root, bare, named_by_directory=False)
    if root.is_dir() and any(p.is_dir() and is_version_number(p.name) for p in root.iterdir()):
        return ModelLayout(root, named_by_directory=False)
    return ModelLayout(root / name)


def missing_versions(directory: Path, name: str, filename: str) -> str:
    """Why model ``name`` in ``directory`` has no version to load when it has no version directory at
    all, saying where its file goes (the usual mistake: ``<model>/model.onnx`` without ``1/``)."""
    wanted = filename or config_file.DEFAULT_MODEL_FILENAME
    try:
        stray = [wanted] if (directory / wanted).is_file() else _onnx_files(directory)
    except OSError:
        stray = []
    if stray:
        return f"{name}/{stray[0]} is not in a version directory: put it at {name}/1/{stray[0]}"
    return f"no version directory: put the model file at {name}/1/{wanted}"


def repository_mistake(root: Path) -> str | None:
    """Why ``root``, given as a repository of model directories, is not one (what to do instead), or
    None. Two mistakes are common: pointing at one model's directory (``root/1/model.onnx``,
    ``root/config.pbtxt``), and at a directory holding a model file itself."""
    try:
        entries = sorted(root.iterdir())
        versions = [p for p in entries if p.is_dir() and is_version_number(p.name) and _onnx_files(p)]
        models = [p for p in entries if p.is_dir() and p not in versions and _has_version_directory(p)]
        files = _onnx_files(root)
    except OSError:
        return None  # an unreadable repository is reported where it is read
    config = (root / config_file.CONFIG_FILENAME).is_file()
    if versions or (config and not models):
        held = [f"{v.name}/{_onnx_files(v)[0]}" for v in versions] + ([config_file.CONFIG_FILENAME] if config else [])
        return (
            f"--model-repository {root} is one model's directory (it holds {', '.join(held)}), not a repository "
            f"of model directories: point --model-repository at its parent, {root.parent}, to serve it as model "
            f"'{root.name}' (or add --model-name NAME to serve this directory alone)"
        )
    if files and not models:
        return (
            f"--model-repository {root} holds a model file ({files[0]}) but no model directory: put it at "
            f"<model>/1/{files[0]} inside the repository, or add --model-name NAME to serve this directory as one model"
        )
    return None


def _onnx_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.onnx") if p.is_file())


def _has_version_directory(directory: Path) -> bool:
    return any(p.is_dir() and is_version_number(p.name) for p in directory.iterdir())
