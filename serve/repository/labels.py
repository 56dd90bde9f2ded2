"""Class labels from an output's ``label_filename`` (Triton: a file in the model directory, one label
per line, line i naming class index i), for the classification extension."""

from __future__ import annotations

from pathlib import Path

from serve.errors import ModelLoadError
from serve.paths import confined
from serve.protocol import model_config_pb2 as mc


def read_labels(config: mc.ModelConfig, model_dir: Path) -> dict[str, list[str]]:
    labels: dict[str, list[str]] = {}
    for output in config.output:
        if not output.label_filename:
            continue
        name = output.label_filename
        path = confined(model_dir, name, what=f"output '{output.name}': label_filename")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = "not found" if isinstance(exc, FileNotFoundError) else type(exc).__name__
            raise ModelLoadError(f"output '{output.name}': label_filename '{name}' cannot be read ({reason})") from None
        labels[output.name] = _lines(text)
    return labels


def _lines(text: str) -> list[str]:
    # Split on "\n" only, as Triton's getline does (str.splitlines would also split on \x1c and
    # others); a final newline ends the last line rather than starting an empty one.
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    return lines
