"""The paper's configs say what the official ones say (GitHub ronghanghu/seg_every_thing, Detectron):
each maskx key is written beside the official key it comes from, with the official value; defaults
the official file leaves to Detectron come from its `lib/core/config.py`."""
import pytest

from maskx.orchestrator.config import load_config

# configs/bbox2mask_coco/voc2nonvoc/eval_e2e/e2e_clsbox_2_layer_mlp_nograd.yaml, and
# nonvoc2voc/eval_e2e/... (the same but MRCNN_LABELS_TO_KEEP), with lib/core/config.py's defaults.
COMMON = {
    "model.backbone.fpn_channels": 256,                  # FPN.DIM (default)
    "model.backbone.norm": "frozen_bn",                  # Detectron's ResNet: affine channel, frozen statistics
    "model.backbone.trainable_layers": 3,                # TRAIN.FREEZE_AT: 2 (default): stem and res2 frozen
    "model.box_loss.kind": "ce",                         # softmax cross-entropy
    "model.box_head_dim": 1024,                          # FAST_RCNN.ROI_BOX_HEAD: add_roi_2mlp_head, MLP_HEAD_DIM 1024
    "model.mask_head.mode": "transfer+mlp",              # MRCNN.BBOX2MASK.BBOX2MASK_ON + MRCNN.JOINT_FCN_MLP_HEAD: true
    "model.mask_head.transfer_input": "cls+box",         # BBOX2MASK.INCLUDE_CLS_SCORE (default true) + INCLUDE_BBOX_PRED: true
    "model.mask_head.transfer_layers": 2,                # BBOX2MASK.TYPE: 2_layer
    "model.mask_head.transfer_hidden": None,             # bbox2mask_weight_transfer(dim_h=dim): the mask head's 256
    "model.mask_head.transfer_activation": "leaky_relu",  # BBOX2MASK.USE_LEAKYRELU (default true)
    "model.mask_head.stop_gradient": True,               # BBOX2MASK.STOP_DET_W_GRAD: true
    "model.mask_head.mlp_layers": 1,                     # MRCNN.MLP_MASK_BRANCH_TYPE: '' (default): 1_layer
    "model.mask_head.mlp_input": "upsampled",            # cls_agnostic_mlp_branch(dim_in=dim * RESOLUTION**2)
    "model.mask_head.conv_channels": 256,                # MRCNN.DIM_REDUCED (default)
    "model.mask_head.num_convs": 4,                      # ROI_MASK_HEAD: ..._fcn_head_v1up4convs
    "model.min_size": 800,                               # TEST.SCALE: 800
    "model.max_size": 1333,                              # TEST.MAX_SIZE: 1333
    "model.box_batch_size_per_image": 512,               # TRAIN.BATCH_SIZE_PER_IM: 512
    "model.rpn_batch_size_per_image": 256,               # TRAIN.RPN_BATCH_SIZE_PER_IM (default)
    "model.rpn_pre_nms_top_n_train": 2000,               # TRAIN.RPN_PRE_NMS_TOP_N: 2000
    "model.rpn_post_nms_top_n_train": 2000,              # TRAIN.RPN_POST_NMS_TOP_N (default) ...
    "model.rpn_post_nms_per": "batch",                   # ... per batch: FPN collect() keeps the batch's top 2000
    "model.box_reg_beta": 1.0,                           # fast_rcnn_heads.py: SmoothL1Loss, Caffe2's default beta
    "model.mask_target": "binary",                       # roi_data/mask_rcnn.py: mask > 0, rasterized in the RoI
    "model.rpn_pre_nms_top_n_test": 1000,                # TEST.RPN_PRE_NMS_TOP_N: 1000
    "model.rpn_post_nms_top_n_test": 1000,               # TEST.RPN_POST_NMS_TOP_N: 1000
    "model.box_nms_thresh": 0.5,                         # TEST.NMS: 0.5
    "model.box_score_thresh": 0.05,                      # TEST.SCORE_THRESH (default)
    "model.detections_per_img": 100,                     # TEST.DETECTIONS_PER_IM (default)
    "model.anchor_sizes": [32, 64, 128, 256, 512],       # FPN.RPN_ANCHOR_START_SIZE 32, levels 2-6 (defaults)
    "model.aspect_ratios": [0.5, 1.0, 2.0],              # FPN.RPN_ASPECT_RATIOS (default)
    "data.min_sizes": [800],                             # TRAIN.SCALES: (800,)
    "data.max_size": 1333,                               # TRAIN.MAX_SIZE: 1333
    "scaling.num_workers": 8,                            # NUM_GPUS: 8
    "solver.momentum": 0.9,                              # SOLVER.MOMENTUM (default)
    "solver.weight_decay": 0.0001,                       # SOLVER.WEIGHT_DECAY: 0.0001
    "solver.bias_lr_factor": 2.0,                        # modeling/optimizer.py: a bias's gradient x2, no decay
    "solver.gamma": 0.1,                                 # SOLVER.GAMMA: 0.1
    "solver.warmup_iters": 500,                          # SOLVER.WARM_UP_ITERS (default)
    "solver.warmup_factor": pytest.approx(1 / 3),        # SOLVER.WARM_UP_FACTOR (default), WARM_UP_METHOD linear
}
R50 = {"model.backbone.name": "resnet50",                # MODEL.CONV_BODY: FPN.add_fpn_ResNet50_conv5_body
       "data.batch_size": 2,                             # TRAIN.IMS_PER_BATCH (default 2)
       "solver.lr": 0.02, "solver.max_iter": 90000,      # SOLVER.BASE_LR: 0.02, MAX_ITER: 90000
       "solver.steps": [60000, 80000]}                   # SOLVER.STEPS: [0, 60000, 80000]
# configs/bbox2mask_coco/voc2nonvoc/eval_e2e_R101/e2e_clsbox_2_layer_mlp_nograd_R101.yaml
R101 = {"model.backbone.name": "resnet101",              # MODEL.CONV_BODY: FPN.add_fpn_ResNet101_conv5_body
        "data.batch_size": 1,                            # TRAIN.IMS_PER_BATCH: 1
        "solver.lr": 0.01, "solver.max_iter": 180000,    # SOLVER.BASE_LR: 0.01, MAX_ITER: 180000
        "solver.steps": [120000, 160000]}                # SOLVER.STEPS: [0, 120000, 160000]
# TRAIN.MRCNN_LABELS_TO_KEEP: the 20 VOC classes (voc2nonvoc) or the 60 others (nonvoc2voc).
# The VG-3k recipe: configs/bbox2mask_vg/eval_sw{,_R101}/stage1_e2e_fast_rcnn_R-{50,101}-FPN_1x_1im.yaml (a
# fast_rcnn: boxes only, IMS_PER_BATCH 1) and stage2_cocomask_clsbox_2_layer_mlp_nograd{,_R101}.yaml
# (mask_rcnn_frozen_features on COCO, TRAIN_MASK_HEAD_ONLY, WEIGHTS: the stage-1 detector).
VG_STAGE1 = {"data.batch_size": 1,                       # TRAIN.IMS_PER_BATCH: 1
             "solver.lr": 0.01, "solver.max_iter": 180000,  # SOLVER.BASE_LR: 0.01, MAX_ITER: 180000
             "solver.steps": [120000, 160000],           # SOLVER.STEPS: [0, 120000, 160000]
             "data.mask_sets": [],                       # MODEL.TYPE: fast_rcnn (no mask branch to train)
             "model.freeze": [], "model.init_from": None}
VG_STAGE2 = {"data.mask_sets": ["coco"],                 # TRAIN.DATASETS: coco_2014_train + valminusminival, masks
             "model.freeze": ["backbone", "rpn", "box_head"],  # TYPE: mask_rcnn_frozen_features, TRAIN_MASK_HEAD_ONLY
             "model.init_from_parts": ["backbone", "rpn", "box_head"]}  # TRAIN.WEIGHTS: ..._vg3k2coco_det.pkl
CONFIGS = {"vg3k-r50.yaml": {**VG_STAGE1, "model.backbone.name": "resnet50"},
           "vg3k-r101.yaml": {**VG_STAGE1, "model.backbone.name": "resnet101"},
           "vg3k-masks-r50.yaml": {**R50, **VG_STAGE2, "model.init_from": "models:/maskx-vg3k-detector-r50/1"},
           "vg3k-masks-r101.yaml": {**R101, **VG_STAGE2, "model.init_from": "models:/maskx-vg3k-detector-r101/1"},
           "voc-to-nonvoc-r50.yaml": {**R50, "data.mask_sets": ["voc"]},
           "voc-to-nonvoc-r101.yaml": {**R101, "data.mask_sets": ["voc"]},
           "nonvoc-to-voc-r50.yaml": {**R50, "data.mask_sets": ["nonvoc"]},
           "nonvoc-to-voc-r101.yaml": {**R101, "data.mask_sets": ["nonvoc"]}}


def value_at(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_paper_config_is_the_official_one(name):
    cfg = load_config(f"configs/{name}")
    expected = {**COMMON, **CONFIGS[name]}
    found = {key: value_at(cfg, key) for key in expected}
    assert found == expected
    assert cfg.model.backbone.weights  # a frozen backbone starts from ImageNet weights
