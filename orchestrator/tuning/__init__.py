"""`maskx tune`: Ray Tune sweeps of whole training runs, their trials, Ctrl-C, the summary and
variant tables, and guarded promotion of the best model to the registry's champion alias."""
