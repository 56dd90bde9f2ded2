"""OnnxRunner's choice between running a batch on the event loop and handing it to a thread."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import serve.runtime.onnx_runner as onnx_runner
from serve.modelgen import mlp, save
from serve.runtime.onnx_runner import OnnxRunner
from serve.runtime.options import RuntimeOptions


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[OnnxRunner]:
    path = tmp_path / "model.onnx"
    save(mlp([4, 8, 2], seed=3), path)
    made = OnnxRunner(path, RuntimeOptions(intra_op_threads=1))
    yield made
    made.close()


def _batch() -> dict[str, np.ndarray]:
    return {"input": np.arange(12, dtype=np.float32).reshape(3, 4)}


def test_run_now_answers_what_run_sync_answers_for_a_fast_model(
    runner: OnnxRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(onnx_runner, "INLINE_BELOW_NS", 10**12)  # every model counts as fast

    now = runner.run_now(_batch())

    assert now is not None
    np.testing.assert_array_equal(now["output"], runner.run_sync(_batch())["output"])


def test_run_now_declines_a_model_slower_than_a_hand_off(runner: OnnxRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_runner, "INLINE_BELOW_NS", 0)  # every model counts as slow

    assert runner.run_now(_batch()) is None


async def test_run_hands_a_declined_batch_to_a_thread(runner: OnnxRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_runner, "INLINE_BELOW_NS", 0)

    outputs = await runner.run(_batch())

    np.testing.assert_array_equal(outputs["output"], runner.run_sync(_batch())["output"])
