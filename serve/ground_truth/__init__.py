"""Ground truth (README: Ground truth): labels joined to predictions by request id, into realized performance per
model version and per window of the prediction time. Pure and server-independent: the server wires it.

targets (which output is the prediction), labels (a feedback call's labels, parsed and checked), store (the
bounded join store of one version; dropped: its record of dropped ids), outcomes (what became of each label,
and the counts answered), performance (mergeable per-window counts and their JSON), realized (the metrics),
estimate (accuracy expected from binned confidence and a baseline's calibration, before labels come). The server's
side: wiring (the stores of a process), document (the performance document and its merge), feedback_codec.
"""

from serve.ground_truth.labels import Label, check_labels, class_index, parse_feedback
from serve.ground_truth.outcomes import FeedbackCounts, FeedbackCountsJson, Outcome, combine
from serve.ground_truth.performance import WindowPerformance, WindowPerformanceJson, merged
from serve.ground_truth.realized import ClassMetricsJson, RealizedJson, realized
from serve.ground_truth.store import JoinStore, bytes_per_row
from serve.ground_truth.targets import Target, TargetJson, Task, target_of

__all__ = [
    "ClassMetricsJson",
    "FeedbackCounts",
    "FeedbackCountsJson",
    "JoinStore",
    "Label",
    "Outcome",
    "RealizedJson",
    "Target",
    "TargetJson",
    "Task",
    "WindowPerformance",
    "WindowPerformanceJson",
    "bytes_per_row",
    "check_labels",
    "class_index",
    "combine",
    "merged",
    "parse_feedback",
    "realized",
    "target_of",
]
