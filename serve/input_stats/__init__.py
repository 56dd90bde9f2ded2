"""Input and output statistics recorded by the server, per model version (README: Input statistics).

binning (bin edges and bin assignment, shared with ``serve baseline``), blocks (the block format
and merging; its groups in numeric_group and item_groups, JSON types in block_json), views and
extracts (which features a tensor yields, and their values), baseline_file and baseline
(baseline.json: reading it, building it), windows (tumbling windows, server instance), recorder
(StatsRecorder; options, batches, drops), document and schema (the JSON document and its merge),
wiring and served_baseline (what the server records and serves).
"""

from serve.input_stats.baseline import Baseline, BaselineError
from serve.input_stats.recorder import StatsOptions, StatsRecorder
from serve.input_stats.windows import ServerInstance

__all__ = ["Baseline", "BaselineError", "ServerInstance", "StatsOptions", "StatsRecorder"]
