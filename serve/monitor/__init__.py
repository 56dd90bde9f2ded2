"""``serve monitor``: drift, SLOs and alerts from the servers' input statistics (README: Drift monitoring).

measures (drift measures on bins, with bounds), policy (thresholds, false-alarm budget,
closed-form noise, persistence), calibration (the baseline's no-drift tables), verdicts
(drifted / stable / undecided, rows needed, detectable shift), evaluate (one model
version against its baseline, pooling), collector (polled
windows, merged without double counting), slo (latency / errors from /metrics),
baselines (which baseline, stale or not), store (SQLite history), alerts (log + webhook),
prom (/metrics), report (HTML + plots), app (HTTP routes), service (the cycle), config,
command (the command line).
"""
