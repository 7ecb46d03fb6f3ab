"""The launcher page beside the MLflow UI: start, watch, stop and resume runs and sweeps from a browser."""
