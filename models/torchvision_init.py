"""Start from torchvision's COCO Mask R-CNN (`maskrcnn_resnet50_fpn`, or `_v2` where the architecture
matches): its backbone, FPN, RPN, box head and mask convs, and the box predictor rows of the COCO
classes placed at those classes' rows of the maskx vocabulary; a class-specific mask predictor takes
its up-convolution and the COCO classes' mask logit rows too. Rows of classes that are not COCO's
(VG synsets) and a weight-transfer mask predictor keep their fresh initialization.

torchvision's predictors have 91 rows indexed by COCO category id (0 background, some ids unused), so
row `coco_id` of theirs becomes row `label` of ours.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

# Per class row: (rows per class in the tensor's first dimension).
_CLASS_ROWS = {"roi_heads.box_predictor.cls_score.weight": 1, "roi_heads.box_predictor.cls_score.bias": 1,
               "roi_heads.box_predictor.bbox_pred.weight": 4, "roi_heads.box_predictor.bbox_pred.bias": 4,
               "roi_heads.mask_predictor.class_weights.weight": 1, "roi_heads.mask_predictor.class_weights.bias": 1}
# torchvision's MaskRCNNPredictor as maskx's MaskXPredictor names it (its 1x1 conv as one row per class).
_MASK_PREDICTOR_NAMES = {"roi_heads.mask_predictor.conv5_mask.weight": "roi_heads.mask_predictor.upsample.weight",
                         "roi_heads.mask_predictor.conv5_mask.bias": "roi_heads.mask_predictor.upsample.bias",
                         "roi_heads.mask_predictor.mask_fcn_logits.weight": "roi_heads.mask_predictor.class_weights.weight",
                         "roi_heads.mask_predictor.mask_fcn_logits.bias": "roi_heads.mask_predictor.class_weights.bias"}


@dataclass
class InitReport:
    taken: list[str] = field(default_factory=list)  # tensors copied whole
    class_rows: int = 0  # classes whose box predictor rows came from the source
    skipped: dict[str, str] = field(default_factory=dict)  # source tensor -> why not taken
    untouched: list[str] = field(default_factory=list)  # our tensors nothing was copied into

    def summary(self) -> str:
        groups = sorted({".".join(k.split(".")[:2]) for k in self.taken})
        return (f"took {len(self.taken)} tensors ({', '.join(groups)}) and the box predictor rows of {self.class_rows} "
                f"COCO classes; skipped {len(self.skipped)} source tensors; {len(self.untouched)} of ours keep their "
                f"initialization ({', '.join(sorted({'.'.join(k.split('.')[:2]) for k in self.untouched})) or 'none'})")


@torch.no_grad()
def load_torchvision_detector(model: nn.Module, source: dict[str, torch.Tensor],
                              coco_id_of_label: list[Optional[int]]) -> InitReport:
    """Copy `source` (a torchvision Mask R-CNN state dict) into `model` where names and shapes match;
    the box predictor by class: `coco_id_of_label[label]` is the source row of our `label` (None: none;
    label 0, background, takes row 0)."""
    ours = model.state_dict()  # views of the parameters and buffers: copying into them fills the model
    report = InitReport()
    filled = set()
    for key, tensor in source.items():
        if key in _MASK_PREDICTOR_NAMES:
            key = _MASK_PREDICTOR_NAMES[key]
            tensor = tensor.flatten(1) if key.endswith("class_weights.weight") else tensor
        if key in _CLASS_ROWS and key in ours and ours[key].shape[0] != len(coco_id_of_label) * _CLASS_ROWS[key]:
            report.skipped[key] = f"one row per class, but maskx's has {ours[key].shape[0]} rows (a class-agnostic head)"
        elif key in _CLASS_ROWS and key in ours:
            per_class = _CLASS_ROWS[key]
            for label, coco_id in enumerate(coco_id_of_label):
                row = 0 if label == 0 else coco_id
                if row is None or (row + 1) * per_class > tensor.shape[0]:
                    continue
                ours[key][label * per_class:(label + 1) * per_class] = tensor[row * per_class:(row + 1) * per_class]
            filled.add(key)
        elif key not in ours:
            report.skipped[key] = "no such tensor in maskx's model"
        elif ours[key].shape != tensor.shape:
            report.skipped[key] = f"shape {tuple(tensor.shape)}, maskx's {tuple(ours[key].shape)}"
        else:
            ours[key].copy_(tensor)
            report.taken.append(key)
            filled.add(key)
    report.class_rows = sum(1 for label, c in enumerate(coco_id_of_label) if label and c is not None)
    report.untouched = sorted(k for k in ours if k not in filled)
    return report
