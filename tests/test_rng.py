"""runtime.rng.TorchGenerator against torch.Generator("cpu") itself."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fashiongen.runtime.rng import TorchGenerator

torch = pytest.importorskip("torch")

SEEDS = [0, 1, 19687, 2**32 - 1, 2**32 + 19687, 2**63 + 12345, 2**64 - 1, -7]
SHAPES = [(1,), (3,), (7,), (15,), (2, 3), (16,), (17,), (31,), (32,), (33,),
          (1, 4, 8, 6), (2, 4, 9, 7), (1, 4, 64, 64), (3, 4, 32, 24)]
TOL = 1e-6


def _torch_randn(gen, shape, dtype=torch.float32) -> np.ndarray:
    return torch.randn(shape, generator=gen, dtype=dtype).numpy()


@pytest.mark.parametrize("seed", SEEDS)
def test_stream_matches_torch_across_successive_draws(seed):
    """One generator, every shape drawn in turn (twice): each draw continues the stream as torch's does."""
    theirs = torch.Generator("cpu").manual_seed(seed)
    ours = TorchGenerator(seed)
    for shape in SHAPES + SHAPES[::-1]:
        expected = _torch_randn(theirs, shape)
        got = ours.randn(shape)
        assert got.shape == expected.shape and got.dtype == np.float32
        assert np.abs(got - expected).max() <= TOL, (seed, shape)


@pytest.mark.parametrize("shape", SHAPES)
def test_two_draws_from_fresh_generator(shape):
    theirs = torch.Generator("cpu").manual_seed(19687)
    ours = TorchGenerator(19687)
    for _ in range(2):
        np.testing.assert_allclose(ours.randn(shape), _torch_randn(theirs, shape), rtol=0, atol=TOL)


def test_float32_is_bit_exact_on_large_draw():
    """On x86 torch builds (AVX2/AVX-512 kernels) the emulated float32 math is exact, bit for bit."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("bit-exactness is against torch's AVX2 kernel")
    theirs = torch.Generator("cpu").manual_seed(123)
    ours = TorchGenerator(123)
    n = 1 << 18
    assert np.array_equal(ours.randn((n,)), _torch_randn(theirs, (n,)))
    assert np.array_equal(ours.randn((n + 5,)), _torch_randn(theirs, (n + 5,)))


@pytest.mark.parametrize("seed", [0, 19687])
def test_float64_matches_torch(seed):
    theirs = torch.Generator("cpu").manual_seed(seed)
    ours = TorchGenerator(seed)
    for shape in [(5,), (16,), (33,), (2, 4, 9, 7), (1, 4, 8, 6)]:
        got = ours.randn(shape, dtype=np.float64)
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, _torch_randn(theirs, shape, torch.float64), rtol=0, atol=1e-12)


def test_scalar_cache_survives_vector_draws():
    """torch caches the second Box-Muller value of its scalar path; vectorized draws leave it alone."""
    theirs = torch.Generator("cpu").manual_seed(5)
    ours = TorchGenerator(5)
    for shape in [(1,), (64,), (1,), (3,), (20,), (2,)]:
        np.testing.assert_allclose(ours.randn(shape), _torch_randn(theirs, shape), rtol=0, atol=TOL)


def test_manual_seed_resets_stream():
    ours = TorchGenerator(3)
    first = ours.randn((1,))
    ours.randn((40,))
    assert ours.manual_seed(3) is ours
    assert np.array_equal(ours.randn((1,)), first)


def test_empty_and_scalar_shapes():
    ours = TorchGenerator(0)
    assert ours.randn((0, 4)).shape == (0, 4)
    assert ours.randn(()).shape == ()
    assert ours.randn(20).shape == (20,)


def test_bad_arguments():
    with pytest.raises(ValueError, match="seed"):
        TorchGenerator(2**64)
    with pytest.raises(TypeError, match="seed"):
        TorchGenerator(1.5)
    with pytest.raises(ValueError, match="dtype"):
        TorchGenerator(0).randn((4,), dtype=np.float16)
    with pytest.raises(ValueError, match="shape"):
        TorchGenerator(0).randn((-1, 4))


def test_runtime_rng_is_torch_free():
    code = ("import sys, fashiongen.runtime.rng; bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules];"
            "print(*bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=str(Path(__file__).resolve().parents[1]))
    assert result.returncode == 0, result.stdout + result.stderr
