"""fasttrain.ops.gather_normalize and the loader's order/augmentation kernels against the pure-torch
references, on every ISA path, for odd sizes, all output dtypes, and bad input."""

import numpy as np
import pytest
import torch

from fasttrain._ext import _C
from fasttrain.ops import gather_normalize
from fasttrain.ops.data import make_plan, sample_indices
from fasttrain.ops.reference import augment_params_reference, gather_normalize_reference, sample_indices_reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (N, H, W, C): H*W*C of 1, 7, 4099 (not multiples of 8 or 16 lanes) and a CIFAR-like image.
SHAPES = [(1, 1, 1, 1), (7, 1, 7, 1), (5, 4099, 1, 1), (9, 32, 32, 3)]
MEAN3, STD3 = [125.3, 123.0, 113.9], [63.0, 62.1, 66.7]


def images(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)


def stats(C):
    return torch.tensor(MEAN3 * C)[:C], torch.tensor(STD3 * C)[:C]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gather_normalize_matches_reference_bitwise(isa, dtype, shape):
    # Division (not a reciprocal multiply) and one RNE rounding make the kernel bit-identical to
    # `((x.float() - mean) / std).to(dtype)`, which is stricter than "within fp32 rounding".
    src = images(shape)
    mean, std = stats(shape[3])
    idx = torch.tensor([shape[0] - 1, 0] + list(range(shape[0])), dtype=torch.int64)
    ours = gather_normalize(src, idx, mean, std, dtype=dtype)
    ref = gather_normalize_reference(src, idx, mean, std, dtype=dtype)
    assert ours.dtype == dtype and ours.shape == ref.shape
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "aug",
    [dict(crop=(28, 30)), dict(crop=(32, 32), padding=4, flip=True), dict(flip=True, channels_first=True),
     dict(crop=(7, 5), padding=3, flip=True, channels_first=True)],
    ids=["crop", "pad-crop-flip", "flip-chw", "small-crop-chw"],
)
def test_gather_augment_matches_reference_bitwise(isa, dtype, aug):
    src = images((9, 32, 32, 3))
    mean, std = stats(3)
    idx = torch.arange(9).flip(0)
    for seed, epoch in ((0, 0), (123, 4)):
        ours = gather_normalize(src, idx, mean, std, dtype=dtype, seed=seed, epoch=epoch, **aug)
        ref = gather_normalize_reference(src, idx, mean, std, dtype=dtype, seed=seed, epoch=epoch, **aug)
        assert torch.equal(ours, ref)


def test_augmentation_is_per_sample_and_varies():
    src = images((64, 8, 8, 3))
    mean, std = stats(3)
    idx = torch.arange(64)
    a = gather_normalize(src, idx, mean, std, crop=6, padding=2, flip=True, seed=1, epoch=0)
    # The draw depends on (seed, epoch, index) only, not on the batch the sample sits in.
    b = gather_normalize(src, idx[[5, 3]], mean, std, crop=6, padding=2, flip=True, seed=1, epoch=0)
    assert torch.equal(a[[5, 3]], b)
    c = gather_normalize(src, idx, mean, std, crop=6, padding=2, flip=True, seed=1, epoch=1)
    assert not torch.equal(a, c)
    params = {augment_params_reference(1, 0, i, 0, H=8, W=8, crop=(6, 6), padding=2, flip=True) for i in range(64)}
    assert len(params) > 20 and {p[2] for p in params} == {True, False}


def test_augment_params_match_kernel():
    plan, _, _ = make_plan("t", "x", np.zeros((3, 10, 12, 3), np.uint8), kind="image", out_dtype=torch.float32,
                           mean=0.0, std=1.0, crop=(7, 9), padding=2, flip=True, salt=3)
    for i in range(200):
        assert _C.data.augment_params(plan, 5, 2, i) == augment_params_reference(5, 2, i, 3, H=10, W=12, crop=(7, 9), padding=2, flip=True)


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 4099])
def test_sample_indices_is_a_permutation_matching_reference(n):
    for shuffle in (True, False):
        ours = sample_indices(n, 7, 3, shuffle, 0, 1, 0, n)
        assert ours.tolist() == sample_indices_reference(n, 7, 3, shuffle)
        assert sorted(ours.tolist()) == list(range(n))
    assert sample_indices(n, 7, 3, False, 0, 1, 0, n).tolist() == list(range(n))


def test_sample_indices_o1_window_matches_full_order():
    n, w = 100_003, 3
    full = sample_indices(n, 1, 2, True, 1, w, 0, (n - 1 + w - 1) // w)
    assert np.array_equal(sample_indices(n, 1, 2, True, 1, w, 30_000, 5), full[30_000:30_005])


def test_gather_normalize_rejects_bad_input():
    src, idx = images((4, 2, 2, 3)), torch.tensor([0, 3])
    mean, std = stats(3)
    with pytest.raises(TypeError, match="uint8"):
        gather_normalize(src.float(), idx, mean, std)
    with pytest.raises(TypeError, match="int64"):
        gather_normalize(src, idx.int(), mean, std)
    with pytest.raises(IndexError, match=r"\[0, 4\)"):
        gather_normalize(src, torch.tensor([4]), mean, std)
    with pytest.raises(ValueError, match="2 values but the images have 3 channels"):
        gather_normalize(src, idx, [1.0, 2.0], std)
    with pytest.raises(ValueError, match="std must be > 0"):
        gather_normalize(src, idx, mean, [1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="not contiguous"):
        gather_normalize(src.transpose(1, 2), idx, mean, std)
    with pytest.raises(ValueError, match="crop"):
        gather_normalize(src, idx, mean, std, crop=5)
    with pytest.raises(ValueError, match="without crop"):
        gather_normalize(src, idx, mean, std, padding=1)
    with pytest.raises(TypeError, match="dtype"):
        gather_normalize(src, idx, mean, std, dtype=torch.float64)
    with pytest.raises(TypeError, match="seed"):
        gather_normalize(src, idx, mean, std, seed=-1)
