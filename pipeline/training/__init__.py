"""One training run: its phases, the step loop, checkpoints, data-parallel processes, FLOPs and samples."""
