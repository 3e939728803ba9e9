"""The training layer: `TrainConfig` (config.py), the optimizer and schedule (optim.py), the run
directory (run_dir.py) and the one loop that orchestrates them (loop.py)."""
