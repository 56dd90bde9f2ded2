"""The monitor sums feature blocks over windows in one pass per set of features (serve/monitor/evaluate.py
merge_windows): the same totals as merging window by window, whatever features each window lists."""

from __future__ import annotations

import numpy as np
import pytest

from serve.input_stats.blocks import Block, NumericSpec, merge_blocks
from serve.monitor.evaluate import merge_windows

EDGES = np.linspace(-3, 3, 11).tolist()


def _window(names: list[str], rng: np.random.Generator, rows: int) -> dict[str, object]:
    group = NumericSpec(names, [EDGES] * len(names)).new_group()
    group.update(rng.standard_normal((len(names), rows)))
    return {"rows": rows, "features": dict(zip(names, group.to_json(), strict=True))}


def _pairwise(windows: list[dict[str, object]]) -> dict[str, Block]:
    merged: dict[str, Block] = {}
    for w in windows:
        features = w["features"]
        assert isinstance(features, dict)
        for name, block in features.items():
            merged[name] = merge_blocks(merged[name], block) if name in merged else block
    return merged


def test_windows_with_other_features_merge_to_the_window_by_window_totals() -> None:
    rng = np.random.default_rng(0)
    windows = [_window(["a", "b"], rng, 50) for _ in range(5)] + [_window(["a", "c"], rng, 30) for _ in range(4)]

    merged, rows = merge_windows(windows)
    expected = _pairwise(windows)

    assert rows == 5 * 50 + 4 * 30 and set(merged) == {"a", "b", "c"}
    for name in merged:
        assert merged[name]["count"] == expected[name]["count"]
        bins, expected_bins = merged[name]["bins"], expected[name]["bins"]
        assert bins["counts"] == expected_bins["counts"]
        assert bins["sums"] == pytest.approx(expected_bins["sums"])  # summed in another order
        assert merged[name]["mean"] == pytest.approx(expected[name]["mean"])
        assert merged[name]["m2"] == pytest.approx(expected[name]["m2"])
