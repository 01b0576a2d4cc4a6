"""The worker's model as DDP gets it: DDP's options as tuned runs set them, BatchNorm synced across GPUs.
That the tuned options leave a step's gradient as one process computes it: test_step_cut.py's two ranks."""
from torch import nn

from maskx.models import BackboneConfig, ModelConfig, build_model
from maskx.orchestrator.training.parallel import BUFFER_SYNC, DDP_BUCKET_CAP_MB, ddp_options, has_batch_norm, sync_batch_norm


def tiny(norm: str) -> nn.Module:
    return build_model(ModelConfig(num_classes=3, backbone=BackboneConfig(name="resnet18", fpn_channels=16, norm=norm,
                                                                          trainable_layers=5)))


def test_no_buffer_broadcast_where_no_buffer_moves_and_gradients_in_the_buckets():
    options = ddp_options(tiny("gn"))
    assert options == {"find_unused_parameters": False, BUFFER_SYNC: False, "gradient_as_bucket_view": True,
                       "bucket_cap_mb": DDP_BUCKET_CAP_MB}
    assert BUFFER_SYNC == "forward_sync_buffers"  # torch 2.14 (the pin): the name that does not warn
    # Plain BatchNorm (norm: bn on CPU processes) still moves its statistics: rank 0's are broadcast.
    assert ddp_options(tiny("bn"))[BUFFER_SYNC] is True


def test_frozen_bn_buffers_never_move_so_they_are_not_broadcast():
    frozen = tiny("frozen_bn")
    assert not has_batch_norm(frozen) and ddp_options(frozen)[BUFFER_SYNC] is False


def test_batch_norm_is_synced_across_gpus_only():
    model = tiny("bn")
    parameters = {name: p for name, p in model.named_parameters()}
    synced = sync_batch_norm(model, "cuda", world_size=2)
    assert has_batch_norm(synced, synced=True) and not has_batch_norm(synced)
    # The same parameter objects: an optimizer built before the conversion still updates them.
    assert all(p is parameters[name] for name, p in synced.named_parameters())
    assert ddp_options(synced)[BUFFER_SYNC] is False  # SyncBatchNorm keeps every rank's statistics equal
    assert not has_batch_norm(sync_batch_norm(tiny("bn"), "cpu", world_size=2), synced=True)  # needs CUDA
    assert not has_batch_norm(sync_batch_norm(tiny("bn"), "cuda", world_size=1), synced=True)
    assert sync_batch_norm(tiny("gn"), "cuda", world_size=2).__class__ is not nn.SyncBatchNorm
