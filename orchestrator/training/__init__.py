"""Training a run on Ray Train: the driver (`trainer.py`), each worker (`worker.py`) with its loop
(`train_loop.py`) and hooks (`hooks.py`), the step and solver (`step.py`), the process group, the
console line, rank 0's metrics to MLflow, and the checks a cluster of several hosts needs."""
