"""The blocked channel layout NC[x]c shared by the CPU kernels, and the kernels that convert.

A value of C channels with block ``b`` is stored as (N, ceil(C/b), *spatial, b): one SIMD
vector of ``b`` channels innermost. When ``b`` does not divide C the last block is padded with
channels whose values are never read as results: the weights that read them are zero (packed
so at load time), and the conversion back to (N, C, *spatial) drops them. Block 0 means the
plain layout (N, C, *spatial).
"""

from __future__ import annotations

from tvm import te, tirx

PLAIN = 0


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def block_for(channels: int, lanes: int) -> int:
    """The channel block of a value the blocked kernels produce: a whole vector, or for fewer
    channels than a vector holds, the smallest power of two (at least 4) that holds them all."""
    if channels >= lanes:
        return lanes
    b = 4
    while b < channels:
        b *= 2
    return min(b, lanes)


def plain_view(x: te.Tensor, channels: int, block: int, name: str = "view") -> te.Tensor:
    """A blocked value read as (N, C, *spatial); a stage the schedules inline into its reader."""
    if block == PLAIN:
        return x
    spatial = x.shape[2:-1]
    return te.compute((x.shape[0], channels, *spatial),
                      lambda n, c, *sp: x[(n, c // block, *sp, c % block)], name=name)


def to_blocked(x: te.Tensor, channels: int, block: int, source_block: int = PLAIN,
               name: str = "to_blocked") -> te.Tensor:
    """A value in the layout with ``block``, from a plain or differently blocked one (padding
    channels are zero)."""
    plain = plain_view(x, channels, source_block, name="view")
    spatial = plain.shape[2:]
    padded = ceil_div(channels, block) * block

    def compute(n, cb, *rest):
        c = cb * block + rest[-1]
        sp = rest[:-1]
        if padded == channels:
            return plain[(n, c, *sp)]
        return tirx.if_then_else(c < channels, plain[(n, tirx.min(c, channels - 1), *sp)],
                                 tirx.const(0.0, x.dtype))

    return te.compute((x.shape[0], ceil_div(channels, block), *spatial, block), compute,
                      name=name)


def to_plain(x: te.Tensor, channels: int, block: int, name: str = "to_plain") -> te.Tensor:
    """A blocked value as (N, C, *spatial), padding channels dropped."""
    spatial = x.shape[2:-1]
    return te.compute((x.shape[0], channels, *spatial),
                      lambda n, c, *sp: x[(n, c // block, *sp, c % block)], name=name)


def conversion(channels: int, source: int, block: int):
    """The compute converting a value of ``channels`` channels from the layout ``source`` to
    ``block`` (either may be PLAIN)."""
    if block == PLAIN:
        return lambda x: to_plain(x, channels, source)
    return lambda x: to_blocked(x, channels, block, source)


def repeat_channels(x: te.Tensor, channels: int, source: int, times: int, block: int,
                    name: str = "repeat") -> te.Tensor:
    """A value of ``channels`` channels in the layout ``source``, each channel repeated
    ``times`` times in a row (channel c of the result is channel c // times of ``x``), in the
    layout ``block``: the input of a depthwise conv with a channel multiplier."""
    plain = plain_view(x, channels, source)
    spatial = plain.shape[2:]
    repeated = te.compute((x.shape[0], channels * times, *spatial),
                          lambda n, c, *sp: plain[(n, c // times, *sp)], name="repeated")
    return to_blocked(repeated, channels * times, block, name=name)
