"""Named sweeps: the experiments.yaml spec and the runner of a sweep's child runs."""
