"""The direct conv kernel against Winograd F(2x2, 3x3) and F(4x4, 3x3), one 3x3 layer at a time.

    python benchmarks/winograd_layers.py                 # the 3x3 layers of ResNet-18 and VGG
    python benchmarks/winograd_layers.py --batch 64 --rounds 7

Each layer is compiled three ways (backends/cpu: conv.py's direct kernel, winograd.py with
each tile), with a bias as its epilogue, and timed in interleaved rounds (median
of the rounds): the measurements behind ``plan.choose_conv_algorithm``'s rule.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

# (input channels, output channels, size): the 3x3 stride-1 layers of the benchmarked networks
LAYERS = [(64, 64, 32), (128, 128, 16), (256, 256, 8), (512, 512, 4),      # ResNet-18 CIFAR
          (64, 64, 56), (128, 128, 28), (256, 256, 14), (512, 512, 7),     # ResNet-18 ImageNet
          (64, 128, 112), (128, 256, 56), (256, 256, 56), (256, 512, 28),  # VGG-11
          (512, 512, 28), (512, 512, 14), (16, 16, 32), (32, 32, 16)]


def build(cin: int, cout: int, size: int, batch: int, algorithm: str):
    """A compiled (x, weight, bias) -> conv + bias kernel and its arguments, for
    ``algorithm`` 'direct', 'f2' or 'f4'."""
    import tvm
    from tvm import te

    from cnncompiler.backends.cpu.conv import ConvGeometry, conv_blocked, schedule_conv
    from cnncompiler.backends.cpu.winograd import schedule_winograd, winograd_conv
    from cnncompiler.backends.targets import parse_target
    from cnncompiler.graph.layouts import layout_shape

    lanes = 16
    geo = ConvGeometry(cin=cin, cout=cout, groups=1, kernel=(3, 3), stride=(1, 1),
                       dilation=(1, 1), pads=((1, 1), (1, 1)), in_spatial=(size, size),
                       out_spatial=(size, size), ib=lanes, ob=lanes)
    m = {"f2": 2, "f4": 4}.get(algorithm)
    layout = "blocked_oihw:16:16" if m is None else f"winograd:{m}:16:16"
    w_shape = layout_shape(layout, (cout, cin, 3, 3))
    x = te.placeholder((batch, geo.in_blocks, size, size, lanes), name="x")
    w = te.placeholder(w_shape, name="w")
    bias = te.placeholder((geo.out_blocks, lanes), name="bias")
    if m is None:
        y = conv_blocked(x, w, bias, geo)
        func = schedule_conv(te.create_prim_func([x, w, bias, y]), geo)
    else:
        y = winograd_conv(x, w, bias, geo, m=m)
        func = schedule_winograd(te.create_prim_func([x, w, bias, y]), geo, m)
    target = tvm.target.Target(parse_target("cpu").config)
    with target:
        lib = tvm.tirx.build(tvm.IRModule({"main": func}), target=target)
    rng = np.random.default_rng(0)
    args = [tvm.runtime.tensor(rng.standard_normal([int(d) for d in t.shape]).astype(np.float32))
            for t in (x, w, bias)]
    args.append(tvm.runtime.empty([int(d) for d in y.shape], "float32", tvm.cpu()))
    return lib, args


def main() -> None:
    import tvm

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--layers", help="cin,cout,size;... (default: the benchmarked networks')")
    opts = ap.parse_args()
    layers = LAYERS if not opts.layers else [tuple(map(int, s.split(",")))
                                             for s in opts.layers.split(";")]
    algorithms = ("direct", "f2", "f4")
    print(f"batch {opts.batch}; median of {opts.rounds} interleaved rounds, ms")
    print(f"{'cin':>5} {'cout':>5} {'size':>5} " + " ".join(f"{a:>8}" for a in algorithms)
          + "  f2/direct f4/direct")
    for cin, cout, size in layers:
        kernels = {a: build(cin, cout, size, opts.batch, a) for a in algorithms}
        times = {a: [] for a in algorithms}
        for _ in range(opts.rounds):
            for a, (lib, args) in kernels.items():
                timer = lib.time_evaluator("main", tvm.cpu(), number=1, repeat=1,
                                           min_repeat_ms=100)
                times[a].append(timer(*args).mean * 1e3)
        med = {a: statistics.median(t) for a, t in times.items()}
        print(f"{cin:>5} {cout:>5} {size:>5} " + " ".join(f"{med[a]:>8.3f}" for a in algorithms)
              + f"  {med['f2'] / med['direct']:>9.2f} {med['f4'] / med['direct']:>9.2f}",
              flush=True)


if __name__ == "__main__":
    main()
