"""OpenTelemetry traces (README: Tracing): a server span per request, one span per batch linked to its requests.

Only serve/tracing/spans.py imports the OpenTelemetry SDK, and only the composition root imports it, and only when
tracing is on: with it off, nothing here loads the SDK."""
