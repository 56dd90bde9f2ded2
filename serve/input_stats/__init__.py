"""Input and output statistics recorded by the server, per model version (README: Input statistics).

binning (bin edges and bin assignment, shared with ``serve baseline``), blocks (mergeable
accumulators), views (which features a tensor yields), baseline (baseline.json),
windows (tumbling windows, server instance), recorder (StatsRecorder), schema (the JSON
document and its merge), http (the ``/input-stats`` routes).
"""

from serve.input_stats.baseline import Baseline, BaselineError
from serve.input_stats.recorder import StatsOptions, StatsRecorder
from serve.input_stats.windows import ServerInstance

__all__ = ["Baseline", "BaselineError", "ServerInstance", "StatsOptions", "StatsRecorder"]
