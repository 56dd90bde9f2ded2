"""One onnxruntime session shared by the instance threads, or one session per instance?

Runs the compute-heavy bench MLP with N threads each calling run() on batches of B rows, for
(a) one session with intra-op threads = cores, shared by all threads, and (b) one session per
thread with cores / N intra-op threads each (what serve does). Prints rows/s of each and the
ratio, measured in the same run.

    python -m bench.instances [--instances 2] [--batch 16] [--seconds 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from serve.modelgen import mlp, save


def session(path: Path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def drive(sessions: list[ort.InferenceSession], batch: int, seconds: float) -> float:
    x = np.random.default_rng(0).standard_normal((batch, 512)).astype(np.float32)
    done = [0] * len(sessions)
    stop = time.perf_counter() + seconds

    def work(i: int) -> None:
        while time.perf_counter() < stop:
            sessions[i].run(None, {"input": x})
            done[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(sessions))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) * batch / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "wide.onnx"
        save(mlp([512, 2048, 2048, 512], seed=1), path)
        shared = session(path, cores)
        shared_rate = drive([shared] * args.instances, args.batch, args.seconds)
        per_instance = [session(path, max(1, cores // args.instances)) for _ in range(args.instances)]
        separate_rate = drive(per_instance, args.batch, args.seconds)
    print(f"{args.instances} instances, batch {args.batch}, {cores} cores")
    print(f"one shared session ({cores} intra-op threads): {shared_rate:10,.0f} rows/s")
    print(f"one session per instance ({max(1, cores // args.instances)} each): {separate_rate:10,.0f} rows/s")
    print(f"per-instance / shared: {separate_rate / shared_rate:.2f}x")


if __name__ == "__main__":
    main()
