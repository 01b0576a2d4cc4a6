"""MLflow: one store and its runs, params, metrics, tables and registry (`store.py`), the team's
tracking server (`server.py`) and the model card a registered version carries (`model_card.py`).
Imports no other room of orchestrator/ (credentials are redacted by `redaction.py`, shared: the
config and the CLI's log filter use it before any store exists)."""
