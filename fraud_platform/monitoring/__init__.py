"""Monitoring in production: how the stream's decisions turn out as labels mature, whether what is served
drifts from what the champion was trained on, and whether served vectors equal their offline recomputation.

Pure library (no Dagster imports): `fraud_platform.defs.monitoring` wraps it in partitioned assets, checks
and a sensor.
"""
