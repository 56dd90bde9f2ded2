"""``serve baseline``: arguments and the command (heavy imports happen only when it runs)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from serve.input_stats.baseline_file import PerformanceJson

log = logging.getLogger("serve.baseline")


def _pairs(values: list[str] | None, flag: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for raw in values or []:
        if "=" not in raw:
            raise SystemExit(f"serve baseline: {flag} takes NAME=VALUE, not {raw!r}")
        name, value = raw.split("=", 1)
        out.setdefault(name.strip(), []).extend(v.strip() for v in value.split(","))
    return out


def _number_or_text(raw: str) -> float | str:
    try:
        return float(raw)
    except ValueError:
        return raw


def add_arguments(parser: argparse.ArgumentParser) -> None:
    _add_model_arguments(parser)
    _add_data_arguments(parser)
    _add_pass_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument(
        "--check",
        action="store_true",
        help="only check the existing baseline against the model (stale ONNX hash, features); exit 1 if unusable",
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="log level")


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-repository", type=Path, required=True, help="Triton-layout model repository")
    parser.add_argument("--model", required=True, help="model name (a directory of the repository)")
    parser.add_argument("--version", type=int, default=None, help="model version [default: the latest served]")
    parser.add_argument(
        "--data",
        action="append",
        default=None,
        metavar="[NAME=]FILE",
        help="training data: .npy (one input; NAME=FILE names it), .npz (arrays by input name), .csv/.tsv or "
        ".parquet (columns by name '<input>', '<input>[i]' or --feature-names, else by order). Repeatable: files "
        "with the same inputs are shards, files with different inputs are columns of the same rows",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output file [default: <model>/baseline.json, where the server reads it]",
    )


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """What the data's columns are: kinds, names, missing values, columns to leave out."""
    parser.add_argument(
        "--categorical",
        action="append",
        default=[],
        metavar="FEATURE",
        help="declare a feature (or every feature of an input) categorical; repeatable or comma-separated. "
        "Kinds are declared here or in config.pbtxt parameter 'categorical_features', never guessed",
    )
    parser.add_argument(
        "--feature-names",
        action="append",
        default=[],
        metavar="INPUT=a,b,c",
        help="names for the columns of a 2-D input [default: CSV/Parquet header when mapped by order, else <input>[i]]",
    )
    parser.add_argument(
        "--missing-value",
        action="append",
        default=[],
        metavar="FEATURE=V",
        help="a sentinel that means 'missing' for a feature or input (e.g. age=-1); NaN and empty cells always do",
    )
    parser.add_argument(
        "--ignore-column",
        action="append",
        default=[],
        metavar="COLUMN",
        help="a data column (or .npz array) that is not a model input, e.g. the label",
    )
    parser.add_argument(
        "--labels",
        default=None,
        metavar="COLUMN",
        help="the label column (or .npz array) of the data; not a model input. The held-out rows' labels against "
        "the model's prediction give baseline.json's 'performance': held-out accuracy, F1, AUC and log loss "
        "(classifiers; labels are class values, matched to the output's class labels or indices) or MAE, RMSE "
        "and bias (regressors), and P(correct) per confidence bin, from which the monitor estimates each "
        "window's accuracy before its labels come",
    )
    parser.add_argument("--no-header", action="store_true", help="CSV files have no header row (map by order)")


def _add_pass_arguments(parser: argparse.ArgumentParser) -> None:
    """How the data are read, sampled for the outputs, and calibrated."""
    parser.add_argument(
        "--holdout",
        type=float,
        default=0.1,
        help="fraction of rows run through the model for the output distribution [default 0.1; 0 = none]",
    )
    parser.add_argument("--max-holdout-rows", type=int, default=100_000, help="cap on held-out rows [default 100000]")
    parser.add_argument("--chunk-rows", type=int, default=65_536, help="rows read at a time [default 65536]")
    parser.add_argument(
        "--memory-limit-mb",
        type=int,
        default=1024,
        help="above this much data, stream twice with quantile sketches instead [default 1024]",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out sample and of the calibration")
    parser.add_argument(
        "--calibration-replicates",
        type=int,
        default=2000,
        help="bootstrap replicates per feature and window size for the no-drift calibration table the monitor "
        "uses for its verdicts [default 2000; 0 = no table, the monitor then uses closed forms]",
    )
    parser.add_argument(
        "--calibration-time",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="time budget of the calibration; features not reached keep the closed form [default 300]",
    )


def run(args: argparse.Namespace) -> int:
    from serve.baseline.model import (
        BaselineInputError,
        baseline_path,
        check_baseline,
        find_baseline,
        load_model,
    )
    from serve.extras import MissingExtraError, require_extra
    from serve.input_stats.baseline import Baseline, BaselineError

    try:
        loaded = load_model(args.model_repository, args.model, args.version)
        info = loaded.info
        if args.check:
            path = args.out or find_baseline(info.model_dir, info.version)
            if path is None or not Path(path).is_file():
                print(f"no baseline for {info.name} version {info.version}", file=sys.stderr)
                return 1
            problems = check_baseline(Baseline.load(path), info)
            for p in problems:
                print(f"{path}: {p}", file=sys.stderr)
            if not problems:
                print(f"{path}: ok for {info.name} version {info.version}")
            return 1 if problems else 0
        if not args.data:
            raise BaselineInputError("--data is required (training data to compute the baseline from)")
        require_extra("baseline")  # reading the data needs pyarrow and tqdm; --check needs neither
        return _build(args, loaded, baseline_path(info.model_dir, info.version))
    except (BaselineInputError, BaselineError, MissingExtraError) as exc:
        print(f"serve baseline: {exc}", file=sys.stderr)
        return 2


def _build(args: argparse.Namespace, loaded: object, default_out: Path) -> int:
    from serve.baseline.builder import BaselineOptions, build_baseline
    from serve.baseline.model import LoadedModel
    from serve.baseline.sources import open_source
    from serve.input_stats.baseline import write_baseline

    assert isinstance(loaded, LoadedModel)
    info = loaded.info
    feature_names = {k: v for k, v in _pairs(args.feature_names, "--feature-names").items()}
    categorical = [c.strip() for raw in args.categorical for c in raw.split(",") if c.strip()]
    missing = {k: [_number_or_text(v) for v in vs] for k, vs in _pairs(args.missing_value, "--missing-value").items()}
    sources = [
        open_source(
            d,
            info.inputs,
            feature_names=feature_names,
            ignore=args.ignore_column,
            csv_header=not args.no_header,
            labels=args.labels,
        )
        for d in args.data
    ]
    options = BaselineOptions(
        categorical=categorical, feature_names=feature_names, missing_values=missing, holdout=args.holdout,
        max_holdout_rows=args.max_holdout_rows, chunk_rows=args.chunk_rows,
        memory_limit_bytes=args.memory_limit_mb << 20, seed=args.seed, progress=not args.no_progress,
        calibration_replicates=args.calibration_replicates, calibration_time_s=args.calibration_time,
        label_column=args.labels,
    )  # fmt: skip
    document = build_baseline(info, sources, options, loaded.class_labels)
    out = args.out or default_out
    out.parent.mkdir(parents=True, exist_ok=True)
    digest = write_baseline(document, out)
    inputs = sum(1 for f in document["features"] if f["role"] == "input")
    outputs = sum(1 for f in document["features"] if f["role"] == "output")
    print(
        f"wrote {out}: {info.name} version {info.version}, {document['source']['rows']} rows, {inputs} input "
        f"feature(s), {outputs} output feature(s) from {document['source']['holdout']['rows']} held-out rows; "
        f"sha256 {digest[:16]}…"
    )
    if "performance" in document:
        print(_performance_line(document["performance"]))
    return 0


def _performance_line(section: PerformanceJson) -> str:
    held = section["held_out"]
    if section["task"] == "classification":
        measured = f"accuracy {held['accuracy']:.4f} ± {held['accuracy_se']:.4f}, F1 {held['f1']:.4f}"
        if held.get("auc") is not None:
            measured += f", AUC {held['auc']:.4f}"
    else:
        measured = f"MAE {held['mae']:.4g} ± {held['mae_se']:.2g}, RMSE {held['rmse']:.4g}, bias {held['bias']:.3g}"
    return f"held out ({held['rows']} rows, labels '{section['label_column']}' vs '{section['output']}'): {measured}"
