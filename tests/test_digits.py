"""The handwritten digits of fmlib.data: a fixed, disjoint split, dequantised values in their bins, the scaling's
formulas, and bits per dimension on cases with known answers."""

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from fmlib.data import (DIGITS_LEVELS, dequantize_digits, digits_bits_per_dim, digits_log_det, digits_to_pixels,
                        load_digits_split)


@pytest.fixture(scope="module")
def split():
    return load_digits_split()


def test_split_is_fixed_disjoint_and_complete(split):
    again = load_digits_split()
    for a, b in zip(split, again):
        assert torch.equal(a, b)
    assert split.train_pixels.shape == (1497, 64) and split.test_pixels.shape == (300, 64)
    assert split.train_pixels.dtype == torch.int64 and split.train_labels.dtype == torch.int64
    # the indices: the permutation of numpy's default_rng(0), test first
    order = np.random.default_rng(0).permutation(1797)
    digits = load_digits()
    assert np.array_equal(split.test_pixels.numpy(), digits.data[order[:300]].astype(np.int64))
    assert np.array_equal(split.train_labels.numpy(), digits.target[order[300:]])
    assert len(set(order[:300]) & set(order[300:])) == 0 and len(set(order)) == 1797
    # another seed gives another split of the same images
    other = load_digits_split(n_test=100, seed=1)
    assert other.test_pixels.shape == (100, 64) and not torch.equal(other.test_pixels, split.test_pixels[:100])
    both = torch.cat([other.train_pixels, other.test_pixels])
    assert torch.equal(both.sum(0), torch.as_tensor(digits.data.astype(np.int64)).sum(0))


def test_scaling_is_that_of_the_dequantised_pixels(split):
    k = split.train_pixels.double()
    assert torch.allclose(split.mean, (k.mean(0) + 0.5) / 17, rtol=0, atol=1e-15)
    assert torch.allclose(split.scale, torch.sqrt(k.var(0, unbiased=False) + 1 / 12) / 17, rtol=0, atol=1e-15)
    # Monte Carlo: many dequantisations of the training images have mean c and standard deviation s
    g = torch.Generator().manual_seed(0)
    x = torch.cat([dequantize_digits(split.train_pixels, split.mean, split.scale, g, dtype=torch.float64)
                   for _ in range(20)])
    assert x.mean(0).abs().max() < 0.02 and (x.std(0) - 1).abs().max() < 0.02
    # a pixel white in every training image has s = 1 / (17 sqrt 12): its x is uniform on [-sqrt 3, sqrt 3)
    white = (split.train_pixels == 0).all(0)
    assert white.any()
    assert torch.allclose(split.scale[white], torch.full_like(split.scale[white], 1 / (17 * math.sqrt(12))))
    assert x[:, white].abs().max() <= math.sqrt(3) + 1e-9


def test_dequantised_values_stay_in_their_bins(split):
    g = torch.Generator().manual_seed(1)
    pixels = split.test_pixels.clone()
    x = dequantize_digits(pixels, split.mean, split.scale, g, dtype=torch.float64)
    assert torch.equal(pixels, split.test_pixels)  # the input is not changed
    grey = digits_to_pixels(x, split.mean, split.scale)
    assert bool(((grey >= pixels - 1e-12) & (grey < pixels + 1 + 1e-12)).all())
    assert torch.equal(grey.floor().clamp(0, 16).long(), pixels)
    # the noise covers the bin: offsets spread over [0, 1)
    offset = (grey - pixels).flatten()
    assert offset.min() < 0.001 and offset.max() > 0.999 and abs(offset.mean().item() - 0.5) < 0.01
    # float32 output, seeded: the same generator seed gives the same values
    a = dequantize_digits(pixels, split.mean, split.scale, torch.Generator().manual_seed(5))
    b = dequantize_digits(pixels, split.mean, split.scale, torch.Generator().manual_seed(5))
    assert a.dtype == torch.float32 and torch.equal(a, b)


def test_bits_per_dim_of_a_uniform_density_is_log2_17(split):
    # uniform on [0, 17)^64 for k + u: in x the box has sides 1 / s_i, density prod_i s_i
    log_p = torch.log(split.scale).sum().reshape(1)
    assert abs(digits_bits_per_dim(log_p, split.scale).item() - math.log2(17)) < 1e-12
    # the same for a 2-pixel image with its own scale: sum_i log(17 s_i) by hand
    scale = torch.tensor([0.5, 2.0], dtype=torch.float64)
    assert abs(digits_log_det(scale) - (math.log(8.5) + math.log(34.0))) < 1e-12
    assert abs(digits_bits_per_dim(torch.log(scale).sum().reshape(1), scale).item() - math.log2(17)) < 1e-12


def test_bits_per_dim_against_a_monte_carlo_probability():
    """A density of x that is not uniform: a 1-pixel Gaussian model. The bits of eq-dg-bits, averaged over the noise,
    bound -log2 P(k) from above (Jensen), and P(k) is the Gaussian's mass on the pixel's bin."""
    mean, scale = torch.tensor([0.3], dtype=torch.float64), torch.tensor([0.2], dtype=torch.float64)
    normal = torch.distributions.Normal(0.0, 1.0)
    k = torch.arange(17).reshape(17, 1)
    lo = ((k / 17 - mean) / scale).double()
    hi = (((k + 1) / 17 - mean) / scale).double()
    prob = normal.cdf(hi) - normal.cdf(lo)  # exact P(k) of the Gaussian in x
    assert abs(prob.sum().item() - (normal.cdf(hi[-1]) - normal.cdf(lo[0])).item()) < 1e-12
    g = torch.Generator().manual_seed(0)
    x = torch.cat([dequantize_digits(k, mean, scale, g, dtype=torch.float64) for _ in range(4000)])
    bits = digits_bits_per_dim(normal.log_prob(x).sum(1), scale).reshape(4000, 17).mean(0)
    exact = -torch.log2(prob.squeeze(1))
    assert bool((bits >= exact - 0.01).all())  # an upper bound, within Monte Carlo error
    # for a bin where the density is nearly constant the bound is nearly tight
    assert abs(bits[5] - exact[5]) < 0.05


def test_bad_input_errors(split):
    m, s = split.mean, split.scale
    with pytest.raises(ValueError, match="n_test"):
        load_digits_split(n_test=0)
    with pytest.raises(ValueError, match="n_test"):
        load_digits_split(n_test=1797)
    with pytest.raises(ValueError, match="seed"):
        load_digits_split(seed=-1)
    with pytest.raises(ValueError, match="pixels"):
        dequantize_digits(split.test_pixels.double(), m, s)
    with pytest.raises(ValueError, match="grey levels"):
        dequantize_digits(split.test_pixels + 1, m, s)  # a level 17
    with pytest.raises(ValueError, match="grey levels"):
        dequantize_digits(split.test_pixels - 1, m, s)
    with pytest.raises(ValueError, match="pixels"):
        dequantize_digits(split.test_pixels[0], m, s)
    with pytest.raises(ValueError, match="mean"):
        dequantize_digits(split.test_pixels, m[:10], s)
    with pytest.raises(ValueError, match="scale"):
        dequantize_digits(split.test_pixels, m, -s)
    with pytest.raises(ValueError, match="scale"):
        dequantize_digits(split.test_pixels, m, s.clone().fill_(float("nan")))
    with pytest.raises(ValueError, match="generator"):
        dequantize_digits(split.test_pixels, m, s, generator=0)
    with pytest.raises(ValueError, match="dtype"):
        dequantize_digits(split.test_pixels, m, s, dtype=torch.int64)
    with pytest.raises(ValueError, match="x"):
        digits_to_pixels(torch.zeros(3, 64, dtype=torch.int64), m, s)
    with pytest.raises(ValueError, match="scale"):
        digits_to_pixels(torch.zeros(3, 64), m, s[:3])
    with pytest.raises(ValueError, match="log_p"):
        digits_bits_per_dim(np.zeros(3), s)
    with pytest.raises(ValueError, match="log_p"):
        digits_bits_per_dim(torch.tensor([float("nan")]), s)
    with pytest.raises(ValueError, match="scale"):
        digits_log_det(torch.zeros(64, dtype=torch.float64))
    with pytest.raises(ValueError, match="scale"):
        digits_log_det(s.reshape(8, 8))
    assert digits_bits_per_dim(torch.tensor([-math.inf]), s).item() == math.inf
    assert DIGITS_LEVELS == 17
