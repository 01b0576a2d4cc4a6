"""The benchmarks run (tiny sizes): a figure in docs/benchmarks.md must stay reproducible. The GPU report's
tiny CPU mode stays in the CI lane (it is what the first lent GPU runs); the others run in the full lane."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.slow
@pytest.mark.bench
def test_prepare_scale_bench_runs_and_prints_its_table(tmp_path):
    result = subprocess.run([sys.executable, "-P", str(BENCH / "prepare_scale.py"), "--scale", "0.0005",
                             "--copy-images", "12"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for row in ("json.load objects.json", "maskx prepare vocab", "maskx prepare vg: annotation side",
                "maskx prepare coco: annotation side", "12 JPEGs"):
        assert row in result.stdout


@pytest.mark.bench
def test_gpu_report_runs_in_its_tiny_cpu_mode(synth_paths, tmp_path):
    import shutil

    data = tmp_path / "coco"
    (data / "annotations").mkdir(parents=True)
    shutil.copy(synth_paths["coco_train_annotations"], data / "annotations" / "instances_train2017.json")
    shutil.copytree(synth_paths["coco_train_images"], data / "train2017")
    # Not -P: the script imports its sibling bench/model_step.py from its own folder.
    out = tmp_path / "out"  # as the lent machine's $OUT: what comes back from it
    out.mkdir()
    result = subprocess.run([sys.executable, str(BENCH / "gpu_report.py"), "--tiny", "--device", "cpu", "--data", str(data),
                             "--write"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OUT": str(out)})
    assert result.returncode == 0, result.stderr[-3000:]
    table = (out / "gpu-report.md").read_text()
    for row in ("model step, 11 classes: maskx / torchvision", "inference (fp32), 11 classes: maskx / torchvision",
                "training loop, 3 iterations", "img/s end to end", "gpu-report: wall time",
                "JPEG decode + resize to 128 px on cpu", "backbone under bf16 autocast, FrozenBN maskx / torchvision"):
        assert row in result.stdout and row in table
    assert "failed:" not in result.stdout, result.stdout


def test_gpu_report_refuses_to_time_a_maskx_that_is_not_its_checkout(synth_paths, tmp_path):
    """Copied into another folder, the report's checkout is that folder; the maskx Python imports (this
    repository's) is another code: refused before anything is timed."""
    import shutil

    other = tmp_path / "other-checkout"
    shutil.copytree(BENCH, other / "bench")
    (other / ".gpu-data" / "coco-tiny" / "train2017").mkdir(parents=True)
    result = subprocess.run([sys.executable, str(other / "bench" / "gpu_report.py"), "--tiny", "--device", "cpu"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "not this checkout" in result.stderr, result.stderr[-2000:]
    assert "model step" not in result.stdout


@pytest.mark.slow
@pytest.mark.bench
def test_coco_eval_bench_runs_and_its_backends_agree(tmp_path):
    result = subprocess.run([sys.executable, "-P", str(BENCH / "coco_eval.py"), "--images", "20"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "faster-coco-eval / pycocotools time:" in result.stdout
    gap = float(result.stdout.split("largest difference between their figures: ")[1].split()[0])
    assert gap < 1e-6, result.stdout


@pytest.mark.integration  # a local Ray instance
@pytest.mark.bench
def test_ray_predict_bench_runs_and_prints_its_table(tmp_path):
    result = subprocess.run([sys.executable, "-P", str(BENCH / "ray_predict.py"), "--repeat", "1", "--limit", "8",
                             "--actors", "1"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for row in ("single process (maskx predict)", "--ray, 1 actor (1 CPU each)", "8 images (coco-tiny val, 8 x 1)"):
        assert row in result.stdout


@pytest.mark.slow
@pytest.mark.bench
def test_transfer_controls_measure_the_span_and_the_shuffled_rows(tmp_path):
    """bench/transfer_controls.py on a model of the family data's vocabulary (known logits, no training)."""
    from maskx.datasets.synth_families import write_family_shards
    from maskx.datasets.vocab import Vocabulary

    from .predicting import write_known_logits_checkpoint

    paths = write_family_shards(str(tmp_path / "families"), train_images=8, val_images=6, seed=1)
    checkpoint = write_known_logits_checkpoint(str(tmp_path / "model"), Vocabulary.load(paths["vocab"]))
    span = subprocess.run([sys.executable, "-P", str(BENCH / "transfer_controls.py"), "span", checkpoint],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert span.returncode == 0, span.stderr[-3000:]
    assert "20 set-A rows, 20 set-B rows of dimension 1280" in span.stdout and "(a random row: 0.016)" in span.stdout
    shuffled = subprocess.run([sys.executable, "-P", str(BENCH / "transfer_controls.py"), "shuffled", checkpoint,
                               f"data.val={paths['coco_val_shards']}", "data.train=[]",
                               "--config", str(BENCH.parent / "configs" / "transfer-families-cpu.yaml")],
                              cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert shuffled.returncode == 0, shuffled.stderr[-3000:]
    assert "as trained" in shuffled.stdout and "set-B rows shuffled across families" in shuffled.stdout


@pytest.mark.bench
def test_gpu_train_smoke_runs_the_worker_s_training_path_in_its_tiny_cpu_mode(synth_paths, tmp_path):
    """The first GPU minutes' correctness check, on a CPU under CPU autocast: gloo world size 1, DDP as the
    worker sets it, the real loader and train_step for both recipes; finite losses, float32 proposals,
    host syncs counted. Its table goes to $OUT as on the lent machine."""
    import shutil

    data = tmp_path / "coco"
    (data / "annotations").mkdir(parents=True)
    shutil.copy(synth_paths["coco_train_annotations"], data / "annotations" / "instances_train2017.json")
    shutil.copytree(synth_paths["coco_train_images"], data / "train2017")
    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run([sys.executable, str(BENCH / "gpu_train_smoke.py"), "--tiny", "--amp", "--data", str(data)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**os.environ, "OUT": str(out)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = (out / "gpu-train-smoke.md").read_text()
    for recipe, dtype in (("COCO R-50 recipe", "bfloat16"), ("VG-3k stage-2 heads, 3001 classes", "bfloat16"),
                          ("COCO R-50 recipe, fp16 + GradScaler", "float16")):
        assert f"| {recipe}: 6 steps, losses | all finite" in table
        assert f"| {recipe}: proposals' dtype under {dtype} autocast | float32 |" in table
        assert f"| {recipe}: host syncs a step (last 2) | " in table
    assert "| COCO R-50 recipe, fp16 + GradScaler: gradient scale after 6 steps | " in table
