"""``serve monitor``: drift, SLOs and alerts from the servers' input statistics (README: Drift monitoring).

measures (drift measures on bins, with bounds), policy (thresholds, minimum window,
persistence), evaluate (one model version against its baseline), collector (polled
windows, merged without double counting), slo (latency / errors from /metrics),
baselines (which baseline, stale or not), store (SQLite history), alerts (log + webhook),
prom (/metrics), report (HTML + plots), app (HTTP routes), service (the cycle), config,
command (the command line).
"""
