"""Where each model's files are: a directory of the repository root, the root itself with
``--model-name`` (layout.py says which layout), or the private directory of files sent with a load
request. Names and directories only; the repository loads what is found here.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from serve.errors import ModelNotFound
from serve.repository.layout import ModelLayout, single_model, triton_model

# Model names: 1 to 128 of ASCII letters, digits, '_', '.', '-', not starting with '.' or '-' (so
# never '.', '..' or a hidden file), and never a path separator (README, "Model names").
_MODEL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")


def valid_model_name(name: str) -> bool:
    return bool(_MODEL_NAME.match(name)) and name not in (".", "..")


class ModelDirectories:
    def __init__(self, root: Path, only: str | None) -> None:
        self.root = root.resolve()
        self.only = only  # --model-name: the one model served (layout.py)
        self._uploaded: dict[str, Path] = {}  # models loaded from files sent with a load request

    def found(self) -> set[str]:
        """The models the root holds now."""
        if self.only is not None:
            return {self.only}
        if not self.root.is_dir():
            return set()
        return {entry.name for entry in self.root.iterdir() if entry.is_dir() and valid_model_name(entry.name)}

    def layout(self, name: str) -> ModelLayout:
        if not valid_model_name(name):
            raise ModelNotFound(f"'{name}' is not a valid model name")
        if name in self._uploaded:
            return triton_model(self._uploaded[name])
        if self.only is not None:
            if name != self.only:
                raise ModelNotFound(f"model '{name}' is not served here: this server serves only '{self.only}'")
            return single_model(self.root, name)  # read again each time: a reload sees files as they are now
        return triton_model(self.root / name)

    def confining(self, name: str) -> Path:
        """The directory no file of model ``name`` may leave."""
        return self._uploaded.get(name, self.root)

    def what_is_there(self) -> str:
        """With --model-name, what the root holds instead (a misnamed model is the usual mistake)."""
        if self.only is None:
            return ""
        held = sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []
        return (
            ": with --model-name the repository must hold a model file (model.onnx), numbered version "
            f"directories, or a directory '{self.only}'; it holds " + (", ".join(held) or "no directory")
        )

    def use_uploaded(self, name: str, directory: Path) -> None:
        """Model ``name`` loads from ``directory`` (uploads.py) from now on."""
        previous = self._uploaded.get(name)
        self._uploaded[name] = directory
        if previous is not None:  # the versions loaded from it hold their sessions, not its files
            shutil.rmtree(previous, ignore_errors=True)

    def forget_uploaded(self, name: str) -> None:
        directory = self._uploaded.pop(name, None)
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    def remove_uploaded(self) -> None:
        for directory in self._uploaded.values():
            shutil.rmtree(directory, ignore_errors=True)
