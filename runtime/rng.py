"""PyTorch's CPU random normal stream, reproduced in numpy.

``TorchGenerator(seed).randn(shape)`` returns what
``torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))`` returns, and successive
calls continue the stream exactly as successive torch calls on one generator do. That is what makes
a seed mean the same thing here as in diffusers (initial latents, then the per-step noise of
ancestral samplers).

How torch draws (ATen ``cpu/DistributionTemplates.h``, ``core/DistributionsHelper.h``,
``core/TransformationHelper.h``, ``CPUGeneratorImpl``):

* The engine is MT19937 seeded with ``init_genrand(seed & 0xffffffff)``: the same generator, bit for
  bit, as numpy's legacy seeding of ``np.random.MT19937``. ``random()`` is one 32-bit output;
  ``random64()`` is two, the first as the high word.
* float32 tensors with 16 or more elements take the vectorized path: fill every element with a
  24-bit uniform ``(r & 0xffffff) * 2**-24``, then Box-Muller over blocks of 16 (element ``j`` pairs
  with ``j + 8``: radius ``sqrt(-2 log(1 - u[j]))``, angle ``2 pi u[j + 8]``; cosine goes to ``j``,
  sine to ``j + 8``). If the size is not a multiple of 16, 16 fresh uniforms overwrite the last 16
  elements and that block is transformed again. On x86 builds (AVX2 / AVX-512 kernels) the log and
  sincos are the float32 Cephes polynomials of ``avx_mathfun.h``, compiled with fused multiply-adds;
  they are emulated here operation by operation, so results are bit-exact there (checked on 10^6
  draws). torch's portable build (``ATEN_CPU_CAPABILITY=default``) uses libm instead and differs
  from its own AVX2 build by up to ~2e-6.
* float64 tensors with 16 or more elements take the same block scheme with 53-bit uniforms from
  ``random64()`` and double-precision libm math.
* Smaller tensors draw element by element from ``normal_distribution<double>``: two 53-bit uniforms
  give ``r = sqrt(-2 log1p(-u2))``, ``theta = 2 pi u1``; ``r cos(theta)`` is returned and
  ``r sin(theta)`` cached in the generator for the next scalar draw. The cache survives across calls
  (the vectorized path neither uses nor clears it) and is part of the stream state.
"""

from __future__ import annotations

import operator
from typing import Iterable

import numpy as np

__all__ = ["TorchGenerator"]

_F32 = np.float32
_F64 = np.float64
_U32_MASK = 0xFFFFFFFF
_VECTOR_MIN_NUMEL = 16  # torch uses the block (vectorized) normal fill from 16 elements on

# Cephes float32 constants, as avx_mathfun.h spells them (rounded to float32 there too).
_LOG_POLY = tuple(_F32(c) for c in (
    7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
    -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1,
))
_LOG_Q1 = _F32(-2.12194440e-4)
_LOG_Q2 = _F32(0.693359375)
_SQRT_HALF = _F32(0.707106781186547524)
_FOUR_OVER_PI = _F32(1.27323954473516)
_MINUS_DP = tuple(_F32(c) for c in (-0.78515625, -2.4187564849853515625e-4, -3.77489497744594108e-8))
_SIN_POLY = tuple(_F32(c) for c in (-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1))
_COS_POLY = tuple(_F32(c) for c in (2.443315711809948e-005, -1.388731625493765e-003, 4.166664568298827e-002))
_TWO_PI_F32 = _F32(2.0 * np.pi)


def _fma(a, b, c) -> np.ndarray:
    """float32 fused multiply-add: the float32 product is exact in float64, one rounding after."""
    return (np.asarray(a, _F32).astype(_F64) * _F64(b) + np.asarray(c, _F64)).astype(_F32)


def _log_f32(x: np.ndarray) -> np.ndarray:
    """``log256_ps`` of avx_mathfun.h for x in (0, 1], as torch's compiled kernel evaluates it."""
    bits = x.view(np.uint32)
    e = ((bits >> 23).astype(np.int32) - 0x7F).astype(_F32) + _F32(1)
    m = ((bits & np.uint32(0x807FFFFF)) | np.uint32(0x3F000000)).view(_F32)  # mantissa in [0.5, 1)
    small = m < _SQRT_HALF
    e = e - small.astype(_F32)
    m = (m - _F32(1)) + np.where(small, m, _F32(0))
    z = m * m
    y = np.full_like(m, _LOG_POLY[0])
    for coef in _LOG_POLY[1:]:
        y = _fma(y, m, coef)
    y = _fma(y * m, z, e * _LOG_Q1)
    y = y - z * _F32(0.5)
    return _fma(e, _LOG_Q2, m + y)


def _sincos_f32(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``sincos256_ps`` of avx_mathfun.h for x >= 0, as torch's compiled kernel evaluates it."""
    j = (x * _FOUR_OVER_PI).astype(np.int32)
    j = (j + 1) & ~1
    y = j.astype(_F32)
    for dp in _MINUS_DP:  # extended-precision range reduction to [-pi/4, pi/4]
        x = _fma(y, dp, x)
    z = x * x
    cos_poly = _fma(_fma(np.full_like(z, _COS_POLY[0]), z, _COS_POLY[1]), z, _COS_POLY[2]) * z
    cos_poly = _fma(cos_poly, z, -(z * _F32(0.5))) + _F32(1)
    sin_poly = _fma(_fma(np.full_like(z, _SIN_POLY[0]), z, _SIN_POLY[1]), z, _SIN_POLY[2]) * z
    sin_poly = _fma(sin_poly, x, x)
    use_sin_poly = (j & 2) == 0
    sin = np.where(use_sin_poly, sin_poly, cos_poly)
    cos = np.where(use_sin_poly, cos_poly, sin_poly)
    sin = np.where((j & 4) != 0, -sin, sin)
    cos = np.where((~(j - 2) & 4) != 0, -cos, cos)
    return sin, cos


def _box_muller_blocks_f32(u: np.ndarray) -> np.ndarray:
    """Blocks of 16 float32 uniforms -> 16 normals each (torch's ``normal_fill_16_AVX2``)."""
    u = u.reshape(-1, 16)
    radius = np.sqrt(_F32(-2) * _log_f32(_F32(1) - u[:, :8]))
    sin, cos = _sincos_f32(_TWO_PI_F32 * u[:, 8:])
    return np.concatenate([radius * cos, radius * sin], axis=1).ravel()


def _box_muller_blocks_f64(u: np.ndarray) -> np.ndarray:
    """Blocks of 16 float64 uniforms -> 16 normals each (torch's portable ``normal_fill_16``)."""
    u = u.reshape(-1, 16)
    radius = np.sqrt(-2.0 * np.log(1.0 - u[:, :8]))
    theta = 2.0 * np.pi * u[:, 8:]
    return np.concatenate([radius * np.cos(theta), radius * np.sin(theta)], axis=1).ravel()


def _normalize_seed(seed) -> int:
    """torch accepts seeds in [-2**63, 2**64) and keeps them modulo 2**64."""
    if isinstance(seed, bool):
        raise TypeError(f"seed must be an integer, got bool {seed!r}")
    try:
        seed = operator.index(seed)
    except TypeError:
        raise TypeError(f"seed must be an integer, got {type(seed).__name__} {seed!r}") from None
    if not -(2**63) <= seed < 2**64:
        raise ValueError(f"seed must be in [-2**63, 2**64), got {seed}")
    return seed % 2**64


class TorchGenerator:
    """A numpy stand-in for ``torch.Generator("cpu").manual_seed(seed)`` (``randn`` only)."""

    def __init__(self, seed: int):
        self.initial_seed = _normalize_seed(seed)
        self._bits = np.random.MT19937()
        self._bits._legacy_seeding(self.initial_seed & _U32_MASK)  # torch's mt19937 seeds with the low 32 bits
        self._cached_normal: float | None = None  # torch's next_double_normal_sample

    def manual_seed(self, seed: int) -> "TorchGenerator":
        """Reseed in place (and drop the cached normal), like ``torch.Generator.manual_seed``."""
        self.__init__(seed)
        return self

    # -- raw streams -------------------------------------------------------------------------------
    def _random32(self, n: int) -> np.ndarray:
        return self._bits.random_raw(n).astype(np.uint32)

    def _uniform_f32(self, n: int) -> np.ndarray:
        return (self._random32(n) & np.uint32(0xFFFFFF)).astype(_F32) * _F32(2.0**-24)

    def _uniform_f64(self, n: int) -> np.ndarray:
        words = self._bits.random_raw(2 * n).reshape(n, 2)
        r64 = (words[:, 0] << np.uint64(32)) | words[:, 1]
        return (r64 & np.uint64((1 << 53) - 1)).astype(_F64) * 2.0**-53

    # -- normal fills ------------------------------------------------------------------------------
    def _normal_blocks(self, numel: int, dtype) -> np.ndarray:
        uniform = self._uniform_f32 if dtype == _F32 else self._uniform_f64
        transform = _box_muller_blocks_f32 if dtype == _F32 else _box_muller_blocks_f64
        full = numel - numel % 16
        out = np.empty(numel, dtype=dtype)
        u = uniform(numel)
        out[:full] = transform(u[:full])
        if full != numel:  # torch redraws 16 uniforms for the last 16 elements
            out[numel - 16:] = transform(uniform(16))
        return out

    def _normal_scalar(self) -> float:
        if self._cached_normal is not None:
            value, self._cached_normal = self._cached_normal, None
            return value
        u1, u2 = self._uniform_f64(2)
        radius = np.sqrt(-2.0 * np.log1p(-u2))
        theta = 2.0 * np.pi * u1
        self._cached_normal = float(radius * np.sin(theta))
        return float(radius * np.cos(theta))

    def randn(self, shape: int | Iterable[int], dtype=np.float32) -> np.ndarray:
        """Standard normal samples of ``shape``, equal to ``torch.randn(shape, generator=g, dtype=...)``.

        ``dtype`` is float32 (default) or float64; other dtypes raise ``ValueError``.
        """
        shape = (operator.index(shape),) if np.isscalar(shape) else tuple(operator.index(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"shape must have non-negative sizes, got {shape}")
        dtype = np.dtype(dtype)
        if dtype not in (np.dtype(_F32), np.dtype(_F64)):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        numel = int(np.prod(shape, dtype=np.int64))
        if numel >= _VECTOR_MIN_NUMEL:
            flat = self._normal_blocks(numel, dtype.type)
        else:
            flat = np.array([self._normal_scalar() for _ in range(numel)], dtype=_F64).astype(dtype)
        return flat.reshape(shape)
