"""Regenerate serve/protocol from protos/*.proto.

Run ``.venv/bin/python protos/generate.py`` after editing a .proto file and commit the
result; tests/test_protos.py fails while the committed code is stale.

protoc's output is adjusted in two ways, both checked so that a protoc upgrade which
changes the generated text fails loudly instead of silently skipping a rewrite:

1. Private descriptor pool. Generated modules register their types in protobuf's
   process-wide default pool. tritonclient (which our tests and users import next to
   serve) registers types with the same full names there (``inference.ModelInferRequest``
   and so on), and the second registration fails with ``TypeError: duplicate symbol``.
   Our modules therefore add their files to ``serve.protocol._pool.POOL`` instead.
   Messages from that pool serialize, parse and work with text_format and json_format
   like any other; gRPC reflection must be given ``pool=POOL``.

2. Package imports. protoc writes ``import model_config_pb2``, which only works when the
   output directory is on sys.path; these become ``from serve.protocol import ...``.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
DEFAULT_OUT = ROOT / "serve" / "protocol"
PACKAGE = "serve.protocol"

PROTOS = ("model_config.proto", "grpc_service.proto", "serve_monitoring.proto", "serve_rollout.proto")
# model_config.proto declares no service; model_config_pb2_grpc.py would be empty.
SERVICE_PROTOS = ("grpc_service.proto", "serve_monitoring.proto", "serve_rollout.proto")

GENERATED = (
    "model_config_pb2.py",
    "model_config_pb2.pyi",
    "grpc_service_pb2.py",
    "grpc_service_pb2.pyi",
    "grpc_service_pb2_grpc.py",
    "serve_monitoring_pb2.py",
    "serve_monitoring_pb2.pyi",
    "serve_monitoring_pb2_grpc.py",
    "serve_rollout_pb2.py",
    "serve_rollout_pb2.pyi",
    "serve_rollout_pb2_grpc.py",
)

_NOTE = "# Post-processed by protos/generate.py: private descriptor pool, package-relative imports.\n"
_POOL_IMPORT_OLD = "from google.protobuf import descriptor_pool as _descriptor_pool\n"
_POOL_IMPORT_NEW = f"from {PACKAGE} import _pool\n"
_POOL_USE_OLD = "_descriptor_pool.Default()"
_POOL_USE_NEW = "_pool.POOL"
_SIBLING_IMPORT = re.compile(r"^import (\w+_pb2) as (\w+)$", re.MULTILINE)


def _run_protoc(work: Path) -> None:
    include = f"-I{PROTO_DIR}"
    runs = (
        [include, f"--python_out={work}", f"--pyi_out={work}", *(str(PROTO_DIR / p) for p in PROTOS)],
        [include, f"--grpc_python_out={work}", *(str(PROTO_DIR / p) for p in SERVICE_PROTOS)],
    )
    for args in runs:
        # protoc.main wants argv, program name first.
        if protoc.main(["grpc_tools.protoc", *args]) != 0:
            raise SystemExit(f"protoc failed: {' '.join(args)}")


def _replace_once(text: str, old: str, new: str, filename: str) -> str:
    if text.count(old) != 1:
        raise SystemExit(f"{filename}: expected exactly one {old!r} in protoc output; update generate.py")
    return text.replace(old, new)


def _post_process(filename: str, text: str) -> str:
    if filename.endswith("_pb2.py"):
        text = _replace_once(text, _POOL_IMPORT_OLD, _POOL_IMPORT_NEW, filename)
        text = _replace_once(text, _POOL_USE_OLD, _POOL_USE_NEW, filename)
        if "_descriptor_pool" in text:
            raise SystemExit(f"{filename}: the default descriptor pool is still referenced")
    text = _SIBLING_IMPORT.sub(rf"from {PACKAGE} import \1 as \2", text)
    if re.search(r"^import \w+_pb2\b", text, re.MULTILINE):
        raise SystemExit(f"{filename}: an absolute import of a generated module is left")
    return _NOTE + text


def generate(out_dir: Path = DEFAULT_OUT) -> list[Path]:
    """Write the generated modules into ``out_dir`` and return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _run_protoc(work)
        for filename in GENERATED:
            text = (work / filename).read_text(encoding="utf-8")
            target = out_dir / filename
            target.write_text(_post_process(filename, text), encoding="utf-8", newline="\n")
            written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
