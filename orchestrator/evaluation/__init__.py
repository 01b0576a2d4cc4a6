"""COCO evaluation: a model's records over val shards (`records.py`, `shards.py`), COCOeval over them
with set A and set B apart (`coco_scoring.py`), and where its detections fail (`error_analysis.py`).
Imports no other room of orchestrator/."""
