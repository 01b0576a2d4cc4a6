"""Pictures of runs, evaluations and data (figures.py), what a run logs of them, its HTML report, and
`maskx browse`."""
