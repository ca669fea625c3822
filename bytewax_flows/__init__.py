"""Bytewax dataflows of the stream side, run with `python -m bytewax.run "bytewax_flows.<module>:build_flow()"`."""
