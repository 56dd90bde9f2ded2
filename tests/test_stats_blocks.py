"""Accumulators (serve.input_stats.blocks) and bin edges (serve.input_stats.binning) against numpy's own answers."""

from __future__ import annotations

import datasketches as ds
import numpy as np
import pytest

from serve.input_stats.binning import BinLayout, assign_bins, compute_edges
from serve.input_stats.blocks import (
    Block,
    BytesSpec,
    CategoricalSpec,
    NumericSpec,
    Spec,
    frequent_from_block,
    kll_from_block,
    merge_blocks,
    merge_feature_blocks,
)

RNG = np.random.default_rng(7)


def _feed(spec, batches):
    group = spec.new_group()
    for b in batches:
        group.update(b)
    return group


def _batches(x: np.ndarray, size: int) -> list[np.ndarray]:
    """Feature-major batches of ``size`` rows."""
    return [np.ascontiguousarray(x[i : i + size].T) for i in range(0, len(x), size)]


# ---------------------------------------------------------------- binning


def test_bin_assignment_puts_values_on_an_edge_into_the_bin_to_its_right() -> None:
    edges = np.array([0.0, 1.0, 2.0])
    assert assign_bins(edges, np.array([-5.0, 0.0, 0.5, 1.0, 1.99, 2.0, 9.0])).tolist() == [
        0,
        1,
        1,
        2,
        2,
        3,
        3,
    ]


def test_baseline_edges_leave_exactly_the_out_of_range_values_in_the_tail_bins() -> None:
    train = RNG.normal(size=5000)
    edges = compute_edges(train)
    live = np.concatenate([train, [train.min() - 1, train.max() + 1, train.max()]])
    bins = assign_bins(edges, live)
    assert (bins == 0).sum() == 1
    assert (bins == edges.size).sum() == 1
    assert assign_bins(edges, train).min() == 1 and assign_bins(edges, train).max() == edges.size - 1


def test_a_discrete_feature_gets_one_bin_per_value() -> None:
    edges = compute_edges(RNG.integers(0, 5, size=1000).astype(float))
    assert edges[:-1].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_bin_layout_flat_index_matches_per_feature_searchsorted() -> None:
    edges = [np.array([0.0, 1.0]), np.array([-1.0, 0.0, 1.0, 2.0])]
    layout = BinLayout(edges)
    xt = RNG.normal(size=(2, 50))
    flat = layout.flat_index(xt, None).reshape(2, 50)
    assert (flat[0] == np.searchsorted(edges[0], xt[0], side="right")).all()
    assert (flat[1] == 3 + np.searchsorted(edges[1], xt[1], side="right")).all()


# ---------------------------------------------------------------- numeric


def test_moments_equal_numpys_over_many_batches() -> None:
    x = RNG.normal(loc=[0.0, 5.0, -3.0], scale=[1.0, 10.0, 0.1], size=(1000, 3))
    group = _feed(NumericSpec(["a", "b", "c"]), _batches(x, 37))
    blocks = group.to_json()
    for j, block in enumerate(blocks):
        assert block["n"] == 1000
        assert block["mean"] == pytest.approx(x[:, j].mean(), rel=1e-12, abs=1e-12)
        assert block["m2"] / (block["n"] - 1) == pytest.approx(x[:, j].var(ddof=1), rel=1e-10)
        assert block["min"] == x[:, j].min() and block["max"] == x[:, j].max()


def test_bin_counts_sums_and_tail_squares_are_exact() -> None:
    edges = np.array([-1.0, 0.0, 0.5, 1.0])
    x = RNG.normal(size=(777, 1))
    block = _feed(NumericSpec(["a"], [edges]), _batches(x, 50)).to_json()[0]
    v = x[:, 0]
    full = np.concatenate([[-np.inf], edges, [np.inf]])
    in_bin = [(v >= lo) & (v < hi) for lo, hi in zip(full[:-1], full[1:], strict=True)]
    assert block["bins"]["counts"] == [int(m.sum()) for m in in_bin]
    assert block["bins"]["sums"] == pytest.approx([v[m].sum() for m in in_bin], rel=1e-12, abs=1e-12)
    assert block["bins"]["tail_sumsq"] == pytest.approx([(v[in_bin[0]] ** 2).sum(), (v[in_bin[-1]] ** 2).sum()])


def test_nan_infinities_and_missing_sentinels_are_counted_and_kept_out_of_the_statistics() -> None:
    v = np.array([1.0, np.nan, np.inf, -np.inf, -999.0, 2.0, np.nan, 3.0])
    spec = NumericSpec(["a"], [np.array([2.0])], missing_values=[[-999.0]])
    block = _feed(spec, [v[None, :]]).to_json()[0]
    assert (block["count"], block["nan"], block["posinf"], block["neginf"], block["missing"]) == (
        8,
        2,
        1,
        1,
        1,
    )
    assert block["n"] == 3
    assert block["mean"] == pytest.approx(2.0)
    assert (block["min"], block["max"]) == (1.0, 3.0)
    assert block["bins"]["counts"] == [1, 2]


def test_a_group_without_valid_values_reports_null_mean_and_range() -> None:
    block = _feed(NumericSpec(["a"]), [np.array([[np.nan, np.nan]])]).to_json()[0]
    assert (block["n"], block["mean"], block["min"], block["max"]) == (0, None, None, None)


def test_kll_quantiles_are_within_the_documented_rank_error() -> None:
    x = np.stack([RNG.lognormal(size=50_000), RNG.uniform(-5, 5, size=50_000)], axis=1)
    blocks = _feed(NumericSpec(["a", "b"], kll_k=200), _batches(x, 512)).to_json()
    eps = ds.kll_floats_sketch.get_normalized_rank_error(200, False)
    assert eps == pytest.approx(0.0133, abs=1e-4)
    for j, block in enumerate(blocks):
        sketch = kll_from_block(block)
        assert sketch.n == 50_000
        truth = np.sort(x[:, j].astype(np.float32))
        for rank in (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99):
            q = sketch.get_quantile(rank)
            true_rank = np.searchsorted(truth, q, side="right") / truth.size
            assert abs(true_rank - rank) <= eps, (j, rank, true_rank)


def test_kll_skips_invalid_values() -> None:
    v = np.array([[1.0, np.nan, np.inf, 2.0]])
    block = _feed(NumericSpec(["a"]), [v]).to_json()[0]
    assert kll_from_block(block).n == 2


def test_merged_groups_equal_one_group_fed_both_streams() -> None:
    edges = [np.linspace(-2, 2, 9), None]
    x = RNG.normal(size=(600, 2))
    spec = NumericSpec(["a", "b"], edges)
    both = _feed(spec, _batches(x, 64))
    left, right = _feed(spec, _batches(x[:250], 64)), _feed(spec, _batches(x[250:], 64))
    left.merge(right)
    for merged, single in zip(left.to_json(), both.to_json(), strict=True):
        assert merged["n"] == single["n"]
        assert merged["mean"] == pytest.approx(single["mean"], rel=1e-12, abs=1e-15)
        assert merged["m2"] == pytest.approx(single["m2"], rel=1e-12)
        assert (merged["min"], merged["max"]) == (single["min"], single["max"])
    assert left.to_json()[0]["bins"]["counts"] == both.to_json()[0]["bins"]["counts"]
    assert kll_from_block(left.to_json()[1]).n == 600


def test_merging_json_blocks_equals_merging_groups() -> None:
    spec = NumericSpec(["a"], [np.array([0.0, 1.0])])
    a = _feed(spec, [RNG.normal(size=(1, 100))])
    b = _feed(spec, [RNG.normal(size=(1, 80))])
    merged_json = merge_blocks(a.to_json()[0], b.to_json()[0])
    a.merge(b)
    expected = a.to_json()[0]
    assert merged_json["bins"]["counts"] == expected["bins"]["counts"]
    assert merged_json["mean"] == pytest.approx(expected["mean"])
    assert merged_json["m2"] == pytest.approx(expected["m2"])


def test_merging_a_binned_block_with_a_sketched_one_is_refused() -> None:
    binned = _feed(NumericSpec(["a"], [np.array([0.0])]), [np.ones((1, 3))]).to_json()[0]
    sketched = _feed(NumericSpec(["a"]), [np.ones((1, 3))]).to_json()[0]
    with pytest.raises(ValueError, match="binned"):
        merge_blocks(binned, sketched)


def _kll_n_instead_of_sketch(block: Block) -> Block:
    """KLL merges are randomised: compare what the sketch holds, not its bytes."""
    if "kll" not in block:
        return block
    return {**block, "kll": {"k": block["kll"]["k"], "sketch": str(kll_from_block(block).n)}}


@pytest.mark.parametrize(
    "spec, values",
    [
        (NumericSpec(["a", "b", "c"], [np.linspace(-2, 2, 9), None, np.array([0.0])], [[], [], [-1]]), None),
        (CategoricalSpec(["c"], [[1, 2, 3]]), np.array([[1.0, 2.0, 7.0, 7.0, np.nan]])),
        (BytesSpec(["s"]), np.array([[b"aa", b"", b"bbb", b"aa"]], dtype=object)),
    ],
    ids=["numeric", "categorical", "bytes"],
)
def test_a_group_read_back_from_its_blocks_writes_the_same_blocks(spec: Spec, values: np.ndarray | None) -> None:
    if values is None:
        values = RNG.normal(size=(3, 300))
        values[0, :4] = np.nan
        values[2, 5] = -1
    blocks = _feed(spec, [values]).to_json()
    assert spec.group_from_json(blocks).to_json() == blocks


def test_merging_a_window_of_features_at_once_equals_merging_them_pair_by_pair() -> None:
    numeric = NumericSpec(["a", "b"], [np.linspace(-2, 2, 9), None])
    categorical = CategoricalSpec(["c"], [[1, 2]])
    windows = []
    for _ in range(3):
        features = dict(zip(["a", "b"], _feed(numeric, [RNG.normal(size=(2, 50))]).to_json(), strict=True))
        features["c"] = _feed(categorical, [RNG.integers(0, 4, size=(1, 50)).astype(float)]).to_json()[0]
        windows.append(features)
    at_once = merge_feature_blocks(windows)
    pairwise = {
        name: merge_blocks(merge_blocks(windows[0][name], windows[1][name]), windows[2][name]) for name in "abc"
    }
    assert list(at_once) == ["a", "b", "c"]
    for name in "abc":
        assert _kll_n_instead_of_sketch(at_once[name]) == _kll_n_instead_of_sketch(pairwise[name])


def test_merging_windows_that_list_different_features_is_refused() -> None:
    block = _feed(NumericSpec(["a"], kll_k=0), [np.ones((1, 3))]).to_json()[0]
    with pytest.raises(ValueError, match="different features"):
        merge_feature_blocks([{"a": block}, {"b": block}])


# ---------------------------------------------------------------- categorical and BYTES


def test_categorical_codes_are_counted_over_the_vocabulary_with_other_and_missing() -> None:
    spec = CategoricalSpec(["c"], [[7, 3, 9]], missing_values=[[-1]])
    values = np.array([[3, 3, 9, 7, 5, 5, 5, -1, np.nan, 11]], dtype=np.float64)
    block = _feed(spec, [values]).to_json()[0]
    assert block["counts"] == [1, 2, 1]
    assert (block["other"], block["missing"], block["count"]) == (4, 2, 10)
    sketch = frequent_from_block(block)
    assert sketch.get_estimate("5") == 3 and sketch.get_estimate("11") == 1
    assert block["other_items"]["top"][0][:2] == ["5", 3]


def test_categorical_strings_are_counted_over_the_vocabulary() -> None:
    spec = CategoricalSpec(["country"], [["DE", "FR"]])
    values = np.array([[b"FR", b"DE", b"FR", b"", b"XX", "DE"]], dtype=object)
    block = _feed(spec, [values]).to_json()[0]
    assert block["counts"] == [2, 2]
    assert (block["other"], block["missing"]) == (1, 1)
    assert block["other_items"]["top"][0][:2] == ["XX", 1]


def test_categorical_groups_merge_by_adding_counts_and_sketches() -> None:
    spec = CategoricalSpec(["c"], [[1, 2]])
    a = _feed(spec, [np.array([[1.0, 2.0, 8.0]])])
    b = _feed(spec, [np.array([[2.0, 8.0, 9.0]])])
    merged = merge_blocks(a.to_json()[0], b.to_json()[0])
    assert merged["counts"] == [1, 2] and merged["other"] == 3
    assert frequent_from_block(merged).get_estimate("8") == 2


def test_bytes_values_get_counts_lengths_and_frequent_items() -> None:
    values = np.array([[b"aa", b"aa", b"bbbb", b"", b"c", b"aa"]], dtype=object)
    block = _feed(BytesSpec(["s"]), [values]).to_json()[0]
    lengths = np.array([2, 2, 4, 1, 2], dtype=float)
    assert (block["count"], block["missing"]) == (6, 1)
    assert block["length"]["n"] == 5
    assert block["length"]["mean"] == pytest.approx(lengths.mean())
    assert block["length"]["m2"] == pytest.approx(((lengths - lengths.mean()) ** 2).sum())
    assert (block["length"]["min"], block["length"]["max"]) == (1, 4)
    assert block["items"]["top"][0][:2] == ["aa", 3]


def test_frequent_items_keep_their_error_bound_beyond_the_map_size() -> None:
    # 300 distinct rare values and one heavy hitter: more than 0.75 * 2^lg distinct items.
    rare = [f"v{i}".encode() for i in range(300)]
    values = np.array([rare + [b"hot"] * 500], dtype=object)
    block = _feed(BytesSpec(["s"], lg_max_map_size=6), [values]).to_json()[0]
    sketch = frequent_from_block(block)
    assert sketch.get_lower_bound("hot") <= 500 <= sketch.get_upper_bound("hot")
    assert sketch.get_upper_bound("hot") - sketch.get_lower_bound("hot") <= sketch.epsilon * 800 + 1
