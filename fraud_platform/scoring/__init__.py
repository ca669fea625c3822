"""Real-time scoring: the champion model (or the rules baseline) over batches of served feature rows.

Plain Python, no Bytewax: `bytewax_flows.scoring` wires these pieces into the stream.

* `models`: the serving model, loaded from the MLflow registry and swapped live when the alias moves.
* `scorer`: batch features from Redis, on-demand features, `assemble`, one vectorised score per batch,
  decisions and reason codes.
* `decisions`: the idempotent decisions stream and the feature log into the landing zone.
* `metrics`: throughput, latency, dead letters and model version, logged and kept in a Redis hash.
"""
