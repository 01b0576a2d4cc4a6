import json
import subprocess
import sys

from maskx.datasets.shard_format import load_manifest


def maskx(*args, check=True):
    return subprocess.run([sys.executable, "-P", "-m", "maskx.orchestrator.cli", *args], capture_output=True, text=True, check=check)


def test_synth_then_prepare_coco_and_vg_with_one_vocabulary(tmp_path):
    raw = tmp_path / "raw"
    maskx("synth", "--out", str(raw), "--train-images", "12", "--val-images", "2", "--vg-images", "6")
    vocab = tmp_path / "vocab.json"
    maskx("prepare", "vocab", "--coco", str(raw / "coco/annotations/instances_train.json"),
          "--vg-objects", str(raw / "vg/objects.json"), "--out", str(vocab))
    out = maskx("prepare", "coco", "--annotations", str(raw / "coco/annotations/instances_train.json"),
                "--images", str(raw / "coco/train"), "--out", str(tmp_path / "coco"), "--vocab", str(vocab),
                "--shard-size", "5", "--workers", "1")
    assert "3 shards, 12 images" in out.stdout
    maskx("prepare", "vg", "--image-data", str(raw / "vg/image_data.json"), "--objects", str(raw / "vg/objects.json"),
          "--images", str(raw / "vg/images"), "--out", str(tmp_path / "vg"), "--vocab", str(vocab), "--workers", "1")
    coco, vg = load_manifest(tmp_path / "coco"), load_manifest(tmp_path / "vg")
    assert coco.vocabulary == vg.vocabulary == json.loads(vocab.read_text())
    assert vg.num_samples == 6


def test_prepare_reports_a_missing_input_clearly(tmp_path):
    result = maskx("prepare", "coco", "--annotations", str(tmp_path / "absent.json"), "--images", str(tmp_path),
                   "--out", str(tmp_path / "out"), check=False)
    assert result.returncode == 2
    assert "absent.json" in result.stderr and "Traceback" not in result.stderr


def test_every_flag_of_every_command_says_what_it_takes():
    import argparse

    from maskx.orchestrator.cli import build_parser

    silent = []

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, path + [name])
            elif not action.help and action.dest != "help":
                silent.append(f"{' '.join(path)} {action.option_strings or action.dest}")

    walk(build_parser(), ["maskx"])
    assert not silent
