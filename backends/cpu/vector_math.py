"""Activations as plain arithmetic, so LLVM vectorizes them.

``tirx.tanh``, ``tirx.sigmoid`` and ``tirx.exp`` lower to one scalar libm call per lane (``expf``),
which made a tanh epilogue cost more than its convolution. These are the polynomial forms
TVM's ``topi.fast_exp`` and ``topi.fast_tanh`` use (Cephes' exp, Eigen's rational tanh),
written on scalar expressions so they can sit inside any kernel's epilogue. Their error is a
few float32 ulps (tests/test_cpu_schedules.py checks them against numpy). Like PyTorch's, they
give NaN for NaN: their clamps are written so that a NaN passes (see te_ops' NaN-propagating
forms).
"""

from __future__ import annotations

from tvm import tirx

from ..te_ops import TEMath

FLOAT = "float32"

_TANH_P = (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11,
           5.12229709037114e-08, 1.48572235717979e-05, 6.37261928875436e-04,
           4.89352455891786e-03)
_TANH_Q = (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03,
           4.89352518554385e-03)
_EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
          1.6666665459e-1, 5.0000001201e-1)


def _c(v: float):
    return tirx.const(v, FLOAT)


def _horner(x, coefficients):
    acc = _c(coefficients[0])
    for c in coefficients[1:]:
        acc = acc * x + _c(c)
    return acc


def _clamp(x, low: float, high: float):
    """x within [low, high]; NaN stays NaN (it compares false both ways)."""
    return tirx.Select(x < _c(low), _c(low), tirx.Select(x > _c(high), _c(high), x))


def fast_tanh(x):
    x = _clamp(x, -9.0, 9.0)
    x2 = x * x
    return x * _horner(x2, _TANH_P) / _horner(x2, _TANH_Q)


def fast_exp(x):
    x = _clamp(x, -88.3762626647949, 88.3762626647949)
    # the exponent becomes an integer, and converting a NaN to one is undefined: replace it
    # there (the polynomial below still sees the NaN, so the product is NaN)
    n = tirx.floor(tirx.Select(tirx.isnan(x), _c(0.0), x) * _c(1.44269504088896341) + _c(0.5))
    r = x - n * _c(0.693147180559945)
    p = _horner(r, _EXP_P) * r * r + r + _c(1.0)
    two_n = tirx.reinterpret(FLOAT, tirx.shift_left(n.astype("int32") + 127, 23))
    return two_n * p


def fast_sigmoid(x):
    return _c(1.0) / (_c(1.0) + fast_exp(-x))


# the operations point-wise layers are written in (layers.pointwise), with these forms
CPU_MATH = TEMath(exp=fast_exp, tanh=fast_tanh, sigmoid=fast_sigmoid)
