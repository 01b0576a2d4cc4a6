"""The benchmarks run (tiny sizes): a figure in docs/benchmarks.md must stay reproducible."""
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_prepare_scale_bench_runs_and_prints_its_table(tmp_path):
    result = subprocess.run([sys.executable, "-P", str(BENCH / "prepare_scale.py"), "--scale", "0.0005",
                             "--copy-images", "12"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for row in ("json.load objects.json", "maskx prepare vocab", "maskx prepare vg: annotation side",
                "maskx prepare coco: annotation side", "12 JPEGs"):
        assert row in result.stdout
