"""The transfer experiment's mechanism controls (docs/ablation.md): measurements on trained checkpoints,
no training.

    span CHECKPOINT [--mask-sets voc]
        How much of each set-B class's detection row (what T reads: cls+box weights, centred over the
        classes) lies in the span of the set-A rows: T only ever gets gradient there, so the part
        outside is what T maps without having learned to. A random row would have |A|/D of its norm
        inside.
    shuffled CHECKPOINT [overrides] --config CONFIG
        Set-B mask AP of a transfer head evaluated twice on the config's data.val: as trained, and with
        T reading, for each set-B class, the row of a set-B class of another shape family (the box head
        detects as it is; only the masks' source changes). If T carries shape knowledge from the
        detector, the shuffled figure falls towards the randn control's.

    python bench/transfer_controls.py span transfer-out/ray_results/families-detector-*/checkpoint_00001200
    python bench/transfer_controls.py shuffled RUN/checkpoint_00000500 --config configs/transfer-families-cpu.yaml
"""
from __future__ import annotations

import argparse
import random
import sys

import torch


def span_fractions(det: torch.Tensor, set_a: list[int], set_b: list[int]) -> list[float]:
    """For each set-B row of `det` (classes x D), the fraction of its squared norm inside the span of
    the set-A rows, after centring every row on the foreground classes' mean."""
    foreground = det[1:]
    centred = det - foreground.mean(dim=0, keepdim=True)
    basis = torch.linalg.qr(centred[set_a].T.double()).Q  # (D, |A|) orthonormal
    fractions = []
    for label in set_b:
        row = centred[label].double()
        inside = basis @ (basis.T @ row)
        fractions.append(float(inside.norm() ** 2 / row.norm() ** 2))
    return fractions


def shuffled_rows(num_classes: int, set_b: list[int], family_of: dict[int, str], seed: int = 0) -> torch.Tensor:
    """input_rows: identity, but each set-B class reads a set-B class of another family (a derangement
    by family: no class keeps its own shape's row)."""
    rng = random.Random(seed)
    for _ in range(1000):
        order = set_b[:]
        rng.shuffle(order)
        if all(family_of[a] != family_of[b] for a, b in zip(set_b, order)):
            rows = torch.arange(num_classes)
            rows[set_b] = torch.tensor(order)
            return rows
    raise ValueError("no shuffle across families exists for these classes")


def run_span(args) -> None:
    from maskx.models.transfer import det_weights
    from maskx.orchestrator.serving.inference import load_model

    loaded = load_model(args.checkpoint)
    set_a = loaded.vocab.resolve_sets(args.mask_sets)
    set_b = [label for label in range(1, loaded.vocab.num_classes) if label not in set_a]
    det = det_weights(loaded.model.roi_heads.box_predictor, "cls+box").detach()
    fractions = span_fractions(det, set_a, set_b)
    print(f"{args.checkpoint}: {len(set_a)} set-A rows, {len(set_b)} set-B rows of dimension {det.shape[1]}")
    print(f"set-B rows' share inside span(set A): mean {sum(fractions) / len(fractions):.3f}, min {min(fractions):.3f}, "
          f"max {max(fractions):.3f} (a random row: {len(set_a) / det.shape[1]:.3f})")
    for label, fraction in zip(set_b, fractions):
        print(f"  {loaded.vocab.name(label):20} {fraction:.3f}")


def run_shuffled(args) -> None:
    from maskx.datasets.synth_families import FAMILY_CLASSES
    from maskx.orchestrator.config import load_config
    from maskx.orchestrator.run_setup import set_up_run
    from maskx.orchestrator.evaluation.shards import evaluate_on_shards
    from maskx.orchestrator.serving.inference import load_model

    cfg = load_config(args.config, args.overrides)
    setup = set_up_run(cfg, train=False)
    loaded = load_model(args.checkpoint)
    weights = loaded.model.roi_heads.mask_predictor.class_weights
    if not hasattr(weights, "input_rows"):
        raise SystemExit(f"{args.checkpoint}: its mask head ({cfg.model.mask_head.mode}) has no weight transfer")
    shape_of = {c.name: c.shape for c in FAMILY_CLASSES}
    family_of = {label: shape_of[loaded.vocab.name(label)] for label in range(1, loaded.vocab.num_classes)}
    set_b = [label for label in range(1, loaded.vocab.num_classes) if label not in setup.set_a]
    for name, rows in (("as trained", None), ("set-B rows shuffled across families",
                                              shuffled_rows(loaded.vocab.num_classes, set_b, family_of))):
        weights.input_rows = rows
        evaluation = evaluate_on_shards(loaded.model, setup.val_sources, setup.vocab, setup.set_a,
                                        batch_size=cfg.eval_batch_size, device=torch.device("cpu"),
                                        error_analysis=False)
        print(f"{name:36} set-B mask AP {100 * evaluation.metrics['segm/setB/AP']:.1f}  set-A mask AP "
              f"{100 * evaluation.metrics['segm/setA/AP']:.1f}  set-B box AP {100 * evaluation.metrics['bbox/setB/AP']:.1f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    span = sub.add_parser("span", help="set-B detection rows' share inside the span of the set-A rows")
    span.add_argument("checkpoint")
    span.add_argument("--mask-sets", nargs="+", default=["voc"], help="set A, as data.mask_sets (default voc)")
    shuffled = sub.add_parser("shuffled", help="set-B mask AP with T's set-B inputs shuffled across families")
    shuffled.add_argument("checkpoint")
    shuffled.add_argument("--config", required=True)
    shuffled.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    {"span": run_span, "shuffled": run_shuffled}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
