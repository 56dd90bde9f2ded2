"""Load a model once in a child process before the server loads it (``python -m serve.runtime.probe``).

A crafted model file can crash onnxruntime natively while it loads (a segfault, an abort), which
would take the whole server and every other model with it. With the check on (the default in the
poll and explicit model-control modes, where files arrive while the server runs), the exact bytes
the server would load are first loaded by a short-lived child; if the child dies, the model fails
to load with the reason, and the server goes on. The child uses the CPU provider: graph parsing and
optimization, where such crashes live, are the same for every provider.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from pathlib import Path

from serve.errors import ModelLoadError

CHECK_TIMEOUT_S = 600.0


def check_in_child(name: str, graph: bytes, external_data_dir: Path | None, timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """Raise ModelLoadError if loading ``graph`` kills or fails a child process."""
    args = [sys.executable, "-m", "serve.runtime.probe"]
    if external_data_dir is not None:
        args += ["--external-data-dir", str(external_data_dir)]
    try:
        done = subprocess.run(args, input=graph, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise ModelLoadError(f"loading {name} in a child process took over {timeout_s:.0f} s; not loaded") from None
    if done.returncode < 0:
        signame = signal.Signals(-done.returncode).name
        raise ModelLoadError(
            f"onnxruntime crashed ({signame}) loading {name} in a child process; the server did not load it"
        )
    if done.returncode != 0:
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
        reason = lines[-1] if lines else f"exit code {done.returncode}"
        raise ModelLoadError(f"onnxruntime could not load {name}: {reason}")


def main() -> int:
    parser = argparse.ArgumentParser(description="load an ONNX model from stdin with onnxruntime, then exit")
    parser.add_argument("--external-data-dir", type=Path, default=None)
    args = parser.parse_args()
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    if args.external_data_dir is not None:
        options.add_session_config_entry(
            "session.model_external_initializers_file_folder_path", str(args.external_data_dir)
        )
    try:
        ort.InferenceSession(sys.stdin.buffer.read(), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # the reason goes back to the server on stderr's last line
        print(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
