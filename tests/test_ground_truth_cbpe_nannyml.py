"""Issue 21's done-when, second half: serve's estimate from binned confidence is within 0.01 of NannyML's CBPE,
which estimates from every row's probability, on the same rows (tests/test_baseline_labels.py's randhie window).

NannyML is not a test dependency (it brings LightGBM, FLAML, plotly, kaleido, cloud storage clients: 2.3 GB):
without it this module is skipped."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.test_baseline_labels import shifted_randhie

nml = pytest.importorskip("nannyml")


@pytest.mark.filterwarnings("ignore:The resulting number of chunks is too low")  # one chunk is the point
def test_estimate_is_within_001_of_nannymls_cbpe_on_the_same_rows(tmp_path: Path) -> None:
    shifted = shifted_randhie(tmp_path)
    reference = pd.DataFrame(
        {
            "proba": shifted.reference_proba,
            "predicted": shifted.reference_predicted,
            "visited": shifted.reference_y,
        }
    )
    analysis = pd.DataFrame({"proba": shifted.window_proba, "predicted": shifted.window_predicted})
    cbpe = nml.CBPE(
        problem_type="classification_binary",
        y_pred_proba="proba",
        y_pred="predicted",
        y_true="visited",
        metrics=["accuracy"],
        chunk_number=1,  # one chunk: every analysis row
    )
    cbpe.fit(reference)
    results = cbpe.estimate(analysis).filter(period="analysis").to_df()
    nannyml_accuracy = float(results[("accuracy", "value")].iloc[0])

    ours = shifted.estimate()["accuracy"]

    # Measured (nannyml 0.13.1): serve 0.6665, nannyml CBPE 0.6683, realized 0.6667.
    assert abs(ours - nannyml_accuracy) <= 0.01, (ours, nannyml_accuracy, shifted.realized)
