"""``serve monitor``: drift, SLOs and alerts from the servers' input statistics (README: Drift monitoring).

measures (drift measures on bins, with bounds), policy (thresholds, false-alarm budget,
closed-form noise, persistence), calibration (the baseline's no-drift tables), verdicts
(drifted / stable / undecided, rows needed, detectable shift), evaluate (one model
version against its baseline, pooling), collector (polled
windows, merged without double counting), slo (latency / errors from /metrics),
baselines (which baseline, stale or not), model_report (a model version's report, typed; its JSON
shapes in model_report_json), store (SQLite history rows), alerts (log + webhook), fetch (HTTP to
replicas), polling (replicas and what they send), recording (states, alerts, history), prom
(/metrics), report (HTML), plots (drawn after each evaluation), app (HTTP routes), service (the
cycle), config, command (the command line).
"""
