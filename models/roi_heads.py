"""RoI heads of Mask^X R-CNN on torchvision's RoIHeads.

What changes from torchvision: the box classifier loss can be focal; the mask predictor takes
its class weights from the box predictor (weight transfer); the mask branch runs and is trained
only on positives matched to an instance that has a mask (partial supervision, Sec. 3.2), and
at inference it predicts a mask for every detected class, set B included. Losses are normalized per
`loss_normalization` (step: independent of how a step's images are cut into batches; batch:
torchvision's means), and a frozen box head (`model.freeze`) is neither run nor trained in training.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import RoIHeads, project_masks_on_boxes

from .losses import box_classifier_loss
from .mask_head import MaskXPredictor
from .sampling import ROI_STREAM, SeededSampler, sampling_seeds


class MaskXRoIHeads(RoIHeads):
    def __init__(
        self,
        *args,
        mask_predictor: MaskXPredictor,
        num_classes: int,
        mask_classes: Optional[list[int]] = None,
        loss_kind: str = "ce",
        focal_gamma: float = 2.0,
        focal_alpha: Optional[float] = None,
        loss_normalization: str = "step",
        box_reg_beta: float = 1.0,
        mask_target: str = "binary",
        **kwargs,
    ):
        super().__init__(*args, mask_predictor=mask_predictor, **kwargs)
        self.box_reg_beta = box_reg_beta
        self.mask_target = mask_target
        self.fg_bg_sampler = SeededSampler(self.fg_bg_sampler.batch_size_per_image, self.fg_bg_sampler.positive_fraction)
        self.loss_normalization = loss_normalization
        self.loss_kind = loss_kind
        self.focal_gamma = focal_gamma
        self.focal_alpha = focal_alpha
        is_set_a = torch.ones(num_classes, dtype=torch.bool)
        if mask_classes is not None:
            is_set_a[:] = False
            is_set_a[list(mask_classes)] = True
        is_set_a[0] = False
        # Which labels' masks may train the mask head; a buffer so it follows .to(device), and a host
        # copy for counting a step's images with masks before its targets reach the device.
        self.register_buffer("is_set_a", is_set_a, persistent=False)
        self.is_set_a_host = is_set_a.clone()

    def check_targets(self, targets):
        # Unlike torchvision, "masks" is optional: images with boxes only carry none. They may have a
        # row per instance (torchvision's layout) or only for the instances with `has_mask` (what
        # maskx's loader ships: no zero placeholders).
        if targets is None:
            raise ValueError("targets should not be None in training")
        for t in targets:
            if "boxes" not in t or "labels" not in t:
                raise ValueError("every target needs 'boxes' and 'labels'")

    def fastrcnn_loss(self, class_logits, box_regression, labels, regression_targets):
        # torchvision's fastrcnn_loss with the classifier loss made configurable, its normalizer chosen, and
        # the smooth-L1 beta a parameter (official: 1.0; torchvision's: 1/9).
        normalizer = self.sampled_rois(labels)
        labels = torch.cat(labels, dim=0)
        regression_targets = torch.cat(regression_targets, dim=0)
        loss_classifier = box_classifier_loss(class_logits, labels, self.loss_kind, self.focal_gamma, self.focal_alpha,
                                              normalizer)
        pos = torch.where(labels > 0)[0]
        box_regression = box_regression.reshape(class_logits.shape[0], -1, 4)
        loss_box_reg = F.smooth_l1_loss(
            box_regression[pos, labels[pos]], regression_targets[pos], beta=self.box_reg_beta, reduction="sum"
        ) / normalizer
        return loss_classifier, loss_box_reg

    def sampled_rois(self, labels: list[torch.Tensor]) -> int:
        """What the box losses' sums are divided by: the RoIs sampled in this batch (batch), or each
        image's quota, `box_batch_size_per_image` (step: every sampled RoI weighs the same in any batch,
        the same as the batch mean whenever each image fills its quota, as at full scale)."""
        if self.loss_normalization == "batch":
            return max(sum(int(l.numel()) for l in labels), 1)
        return len(labels) * self.fg_bg_sampler.batch_size_per_image

    @property
    def box_head_trains(self) -> bool:
        return any(p.requires_grad for p in self.box_predictor.parameters())

    def instance_has_mask(self, target: dict[str, torch.Tensor]) -> torch.Tensor:
        """(N,) bool: the GT instance has a usable mask and its class is in set A."""
        if "masks" not in target:
            return torch.zeros_like(target["labels"], dtype=torch.bool)
        has_mask = target.get("has_mask")
        if has_mask is None:
            has_mask = torch.ones_like(target["labels"], dtype=torch.bool)
        return has_mask.bool() & self.is_set_a[target["labels"]]

    def box_outputs(self, box_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits and box deltas in float32 whatever the autocast: the boxes decoded from them
        and the losses on them keep float32's precision (see rpn.py)."""
        class_logits, box_regression = self.box_predictor(box_features)
        return class_logits.float(), box_regression.float()

    def mask_logits(self, features, proposals, image_shapes, class_ids):
        mask_features = self.mask_roi_pool(features, proposals, image_shapes)
        mask_features = self.mask_head(mask_features)
        return self.mask_predictor(mask_features, class_ids, self.box_predictor).float()

    def mask_loss(self, features, proposals, image_shapes, targets, labels, matched_idxs) -> torch.Tensor:
        """BCE over positives matched to a has_mask instance; exactly 0 when there are none.

        batch: the mean over every such RoI's pixels (torchvision). step: each image's mean over its mask
        RoIs, averaged over the images with a mask to learn from (counted on the device), which the train
        step weights by that count over the whole step: an image's mask RoIs weigh the same however the
        step is cut, and images without masks (set B only, VG) dilute nothing."""
        mask_proposals, mask_matched_idxs, mask_labels, mask_targets = [], [], [], []
        for img_proposals, img_labels, img_matched, target in zip(proposals, labels, matched_idxs, targets):
            has_mask = self.instance_has_mask(target)
            keep = torch.where((img_labels > 0) & has_mask[img_matched])[0] if has_mask.numel() else img_labels[:0]
            mask_proposals.append(img_proposals[keep])
            mask_matched_idxs.append(img_matched[keep])
            mask_labels.append(img_labels[keep])
        num_masks = sum(int(p.shape[0]) for p in mask_proposals)
        if num_masks == 0:
            # Keep every mask parameter in the graph so DDP sees the same parameters on every rank.
            zero = sum(p.sum() for p in self.mask_head.parameters()) + sum(
                p.sum() for p in self.mask_predictor.parameters()
            )
            weights, _ = self.mask_predictor.class_weights(self.box_predictor)
            return (zero + weights.sum()) * 0.0
        logits = self.mask_logits(features, mask_proposals, image_shapes, torch.cat(mask_labels))
        for target, img_proposals, img_matched, (height, width) in zip(targets, mask_proposals, mask_matched_idxs, image_shapes):
            if img_proposals.shape[0]:
                # GT masks may be at any resolution covering the image (the loader keeps the source's,
                # so it never resizes full-image masks): map the proposals onto the mask grid.
                masks = target["masks"]
                if len(masks) != len(target["labels"]):  # compact: one row per instance with has_mask
                    img_matched = (torch.cumsum(target["has_mask"].long(), 0) - 1)[img_matched]
                scale = img_proposals.new_tensor([masks.shape[-1] / width, masks.shape[-2] / height] * 2)
                mask_targets.append(project_masks_on_boxes(masks, img_proposals * scale, img_matched, logits.shape[-1]))
        mask_targets = torch.cat(mask_targets)
        if self.mask_target == "binary":  # Detectron rasterizes each target binary in the RoI; torchvision keeps RoIAlign's fractions
            mask_targets = (mask_targets >= 0.5).to(mask_targets.dtype)
        pixel_losses = F.binary_cross_entropy_with_logits(logits, mask_targets.to(logits.dtype), reduction="none")
        if self.loss_normalization == "batch":
            return pixel_losses.mean()
        per_roi = pixel_losses.flatten(1).mean(1)
        per_image = [rois.mean() for rois in per_roi.split([int(p.shape[0]) for p in mask_proposals]) if rois.numel()]
        # The images with a usable mask, counted on the device: no host sync per image.
        with_masks = torch.stack([self.instance_has_mask(target).any() for target in targets]).sum()
        return torch.stack(per_image).sum() / with_masks.clamp(min=1)

    def forward(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        targets: Optional[list[dict[str, torch.Tensor]]] = None,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        if self.training:
            self.fg_bg_sampler.seeds = sampling_seeds(targets, ROI_STREAM)
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
            losses = {}
            if self.box_head_trains:
                box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
                class_logits, box_regression = self.box_outputs(box_features)
                losses["loss_classifier"], losses["loss_box_reg"] = self.fastrcnn_loss(
                    class_logits, box_regression, labels, regression_targets)
            losses["loss_mask"] = self.mask_loss(features, proposals, image_shapes, targets, labels, matched_idxs)
            return [], losses

        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_outputs(box_features)

        boxes, scores, labels = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
        result = [{"boxes": b, "labels": l, "scores": s} for b, l, s in zip(boxes, labels, scores)]
        class_ids = torch.cat(labels)
        # Traced (`maskx export`), the graph must serve any number of detections, none included: no
        # branch on the count, and split sizes read from shapes, which the tracer keeps dynamic.
        if class_ids.numel() or torch.jit.is_tracing():
            # Sec. 3.2: every class gets a mask at inference, also classes never trained with masks.
            mask_prob = self.mask_logits(features, boxes, image_shapes, class_ids).sigmoid()[:, None]
            for r, probs in zip(result, mask_prob.split([b.shape[0] for b in boxes])):
                r["masks"] = probs
        else:
            for r in result:
                r["masks"] = class_logits.new_zeros((0, 1, 28, 28))
        return result, {}

