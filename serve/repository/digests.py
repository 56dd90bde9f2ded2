"""What exactly serves: the ONNX file's SHA-256 and a hash of the completed model configuration.

Both are computed once per load, kept on the ModelVersion, written to the audit log and shown in
model metadata ``parameters``, so that a running version can be traced to the files it came from.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from serve.protocol import model_config_pb2 as mc


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def config_sha256(config: mc.ModelConfig) -> str:
    # Deterministic serialization orders map fields (parameters), so equal configs hash equally.
    return hashlib.sha256(config.SerializeToString(deterministic=True)).hexdigest()
