"""Each training image draws its anchors and RoIs from its own seed when it carries one."""
import torch

from maskx.models.sampling import ROI_STREAM, RPN_STREAM, SeededSampler, sampling_seeds


def matched(n: int = 400) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(-1, 4, (n,), generator=g)  # -1 ignored, 0 negative, > 0 positive


def test_a_seeded_image_draws_the_same_samples_in_any_batch_and_after_any_draw():
    sampler = SeededSampler(batch_size_per_image=64, positive_fraction=0.25)
    image, other = matched(), matched(300)
    sampler.seeds = [11]
    alone = sampler([image])
    torch.manual_seed(5)
    torch.rand(100)  # whatever ran before
    sampler.seeds = [7, 11]
    with_another = sampler([other, image])
    assert torch.equal(alone[0][0], with_another[0][1]) and torch.equal(alone[1][0], with_another[1][1])
    assert int(alone[0][0].sum()) == 16 and int(alone[1][0].sum()) == 48  # a quarter positive
    sampler.seeds = [12]
    assert not torch.equal(sampler([image])[1][0], alone[1][0])  # another seed, another draw


def test_without_seeds_it_draws_from_the_global_rng_as_torchvision_s():
    from torchvision.models.detection import _utils as torchvision_utils  # only here, to compare with

    ours, theirs = SeededSampler(64, 0.25), torchvision_utils.BalancedPositiveNegativeSampler(64, 0.25)
    torch.manual_seed(3)
    expected = theirs([matched(), matched(300)])
    torch.manual_seed(3)
    got = ours([matched(), matched(300)])
    assert all(torch.equal(a, b) for a, b in zip(got[0] + got[1], expected[0] + expected[1]))


def test_the_rpn_and_the_box_head_draw_different_streams_from_one_seed():
    targets = [{"sampling_seed": 41}, {"sampling_seed": 2**63 - 1}]
    assert sampling_seeds(targets, RPN_STREAM) == [41, 2**63 - 1]
    assert sampling_seeds(targets, ROI_STREAM) == [42, 0]
    assert sampling_seeds([{"boxes": None}], RPN_STREAM) is None  # no seed: the global RNG
