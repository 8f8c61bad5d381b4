"""Winograd convolution on the CPU (backends/cpu/winograd.py) against the numpy reference.

The kernel for both output tiles, F(2x2, 3x3) and F(4x4, 3x3), on odd sizes and asymmetric
padding (edge tiles that overhang the output), channel counts the vector block does not divide,
with the fused epilogues of the direct kernel (bias, batch norm, ReLU, residual add, tanh);
the chooser keeping the direct kernel where Winograd does not apply; the weight layout in the
manifest, a saved artifact reproducing its outputs, and corrupt weights refused.

Winograd's rounding error grows with the tile. Measured here (largest error relative to the
output's largest value, float32 kernel against the float64 reference, 64 / 256 / 512 input
channels): F(2x2, 3x3) 3.0e-7 / 5.8e-7 / 8.2e-7, F(4x4, 3x3) 6.8e-6 / 7.5e-6 / 1.0e-5;
all within the compiler's 1e-4 tolerance (the direct kernel's is about 3e-7).
No timing here: benchmarks/winograd_layers.py and benchmarks/run.py do that.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import yaml

from cnncompiler.errors import ArtifactError
from cnncompiler.graph.layouts import apply_layout, layout_shape
from cnncompiler.graph.winograd import winograd_conv_reference
from cnncompiler.layers.conv import conv_reference

from compile_helpers import assert_close

tvm = pytest.importorskip("tvm")

pytestmark = pytest.mark.tvm

LANES = 16
# the largest relative error each tile may have: what the test below measures, with margin
TILE_ERROR = {2: 2e-6, 4: 2e-5}


def geometry(cin, cout, size, pads=((1, 1), (1, 1)), **changes):
    from cnncompiler.backends.cpu.conv import ConvGeometry

    h, w = size
    keys = dict(cin=cin, cout=cout, groups=1, kernel=(3, 3), stride=(1, 1), dilation=(1, 1),
                pads=pads, in_spatial=(h, w),
                out_spatial=(h + sum(pads[0]) - 2, w + sum(pads[1]) - 2), ib=LANES, ob=LANES)
    keys.update(changes)
    return ConvGeometry(**keys)


def run_kernel(geo, m: int, batch: int = 2, seed: int = 0, tile=None):
    """The Winograd kernel alone on random data: (compiled output, float64 reference); its
    tile the chooser's unless given."""
    from tvm import te

    from cnncompiler.backends.cpu.winograd import schedule_winograd, winograd_conv
    from cnncompiler.backends.targets import parse_target

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, geo.cin, *geo.in_spatial)).astype(np.float32)
    w = rng.standard_normal((geo.cout, geo.cin, 3, 3)).astype(np.float32)
    pad = geo.in_blocks * geo.ib - geo.cin
    xb = np.pad(x, [(0, 0), (0, pad), (0, 0), (0, 0)])
    xb = np.ascontiguousarray(np.moveaxis(xb.reshape(batch, geo.in_blocks, geo.ib,
                                                     *geo.in_spatial), 2, -1))
    wb = np.ascontiguousarray(apply_layout(f"winograd:{m}:{geo.ib}:{geo.ob}", w))
    xt, wt = te.placeholder(xb.shape, name="x"), te.placeholder(wb.shape, name="w")
    y = winograd_conv(xt, wt, None, geo, m=m)
    registers = 32 if geo.ob >= 16 else 16
    func = schedule_winograd(te.create_prim_func([xt, wt, y]), geo, m, registers, tile)
    target = tvm.target.Target(parse_target("cpu").config)
    with target:
        lib = tvm.tirx.build(tvm.IRModule({"main": func}), target=target)
    out = tvm.runtime.empty([int(d) for d in y.shape], "float32", tvm.cpu())
    lib["main"](tvm.runtime.tensor(xb), tvm.runtime.tensor(wb), out)
    got = np.moveaxis(out.numpy(), -1, 2).reshape(batch, -1, *geo.out_spatial)[:, :geo.cout]
    want = conv_reference(x.astype(np.float64), w.astype(np.float64), None, (1, 1), geo.pads,
                          (1, 1), 1)
    return got, want, func


def relative_error(got, want) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


KERNEL_CASES = {
    "odd_9x7": (20, 24, (9, 7), ((1, 1), (1, 1))),
    "valid_8x11": (16, 16, (8, 11), ((0, 0), (0, 0))),
    "asym_pad_5x6": (33, 17, (5, 6), ((0, 1), (2, 0))),
    "one_tile_3x3": (16, 32, (3, 3), ((1, 1), (1, 1))),
}


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("case", list(KERNEL_CASES))
def test_kernel_matches_reference(case, m):
    """Edge tiles that overhang the output, padding on one side only, partial channel blocks."""
    cin, cout, size, pads = KERNEL_CASES[case]
    got, want, func = run_kernel(geometry(cin, cout, size, pads), m)
    assert_close(got, want, what=f"{case} F({m}x{m}, 3x3)")
    text = func.script()
    assert "T.parallel" in text or "T.vectorized" in text


@pytest.mark.parametrize("m", [2, 4])
def test_tasks_split_the_output_channels_where_the_weights_outweigh_the_input(m):
    """Where the layer's weights outweigh its input at a known batch size (the direct kernel's
    ``images_outer`` rule) and bands of tile rows would read megabytes of transformed weights
    again, the whole input is transformed first and the tasks split the output channel
    blocks, each reading its share of the weights; the same sums in the same order as bands
    of tile rows, so the same bits."""
    from dataclasses import replace

    from cnncompiler.backends.cpu.winograd import choose_winograd_tile

    big = geometry(256, 256, (14, 14))   # 4 or 9 MiB of transformed weights, 7 or 4 bands
    tile = choose_winograd_tile(big, m, batch=1)
    assert tile.by_channels and tile.rh == -(-14 // m)
    assert not choose_winograd_tile(big, m, batch=64).by_channels     # the input outweighs
    assert not choose_winograd_tile(big, m, batch=None).by_channels   # any batch: by rows
    # two bands of 128->128 at 16 x 16 read 2.25 MiB again: not worth the whole input's V
    assert not choose_winograd_tile(geometry(128, 128, (16, 16)), 4, batch=1).by_channels

    geo = geometry(48, 64, (9, 10))
    rows = choose_winograd_tile(geo, m, batch=2)
    split = replace(rows, rh=-(-geo.out_spatial[0] // m), by_channels=True)
    got, want, func = run_kernel(geo, m, tile=split)
    assert_close(got, want, what=f"by channels F({m}x{m}, 3x3)")
    assert func.script().count("T.parallel") == 2   # the input transform's, the products'
    by_rows, _, _ = run_kernel(geo, m, tile=rows)
    np.testing.assert_array_equal(got, by_rows)


@pytest.mark.parametrize("cin, input_tasks", [(32, 14), (48, 49)])
def test_an_odd_number_of_tasks_is_split_further(cin, input_tasks):
    """Two threads take 7 tasks in the time of 8. At batch 1, 7 tile rows (14 x 14, F(2x2))
    are transformed as 14 tasks (two halves of an even number of input channel blocks) or
    49 (each tile); 5 groups of output channels, each split by tile row (35 tasks), a thread
    going through its groups in turn. The same sums in the same order: the same bits as the
    one-task-a-group split, and the input's transform per tile as small as before."""
    from dataclasses import replace

    from cnncompiler.backends.cpu.memory import kernel_scratch
    from cnncompiler.backends.cpu.winograd import channel_task_rows, choose_winograd_tile
    from cnncompiler.backends.targets import parse_target

    geo = geometry(cin, 80, (14, 14))
    rows = choose_winograd_tile(geo, 2, batch=1)
    assert channel_task_rows(7, 5) == 1 and channel_task_rows(7, 4) == 7
    whole = replace(rows, rh=7, by_channels=True)
    split = replace(rows, rh=channel_task_rows(7, geo.out_blocks // rows.ro), by_channels=True)
    got, want, func = run_kernel(geo, 2, batch=1, tile=split)
    assert_close(got, want, what="odd task counts")
    text = func.script()
    extents = [int(e) for e in re.findall(r"T\.parallel\((\d+)\)", text)]
    assert extents == [input_tasks, 35], extents
    same, _, whole_func = run_kernel(geo, 2, batch=1, tile=whole)
    np.testing.assert_array_equal(got, same)
    target = tvm.target.Target(parse_target("cpu").config)
    assert kernel_scratch(func, target, 1) <= kernel_scratch(whole_func, target, 1)


@pytest.mark.parametrize("m", [2, 4])
def test_avx2_blocks(m):
    """AVX2's 8-lane blocks and 16 registers: other register tiles, the same results."""
    got, want, _ = run_kernel(geometry(20, 40, (7, 10), ib=8, ob=8), m)
    assert_close(got, want, what=f"8-lane blocks F({m}x{m}, 3x3)")


@pytest.mark.parametrize("m", [2, 4])
def test_error_per_tile_size(m):
    """The measured error of each tile on a deep reduction (256 input channels) stays within
    TILE_ERROR, far inside the 1e-4 every spec must meet; it is the algorithm's own error (the
    float64 Winograd agrees with the direct conv to 1e-12)."""
    geo = geometry(256, 32, (8, 8))
    got, want, _ = run_kernel(geo, m, batch=1)
    assert relative_error(got, want) < TILE_ERROR[m]
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((1, 5, 7, 9)), rng.standard_normal((3, 5, 3, 3))
    exact = conv_reference(x, w, None, (1, 1), ((1, 1), (1, 1)), (1, 1), 1)
    assert relative_error(winograd_conv_reference(x, w, m, ((1, 1), (1, 1))), exact) < 1e-12


# -- the chooser ---------------------------------------------------------------------------------

@pytest.mark.parametrize("changes,why", [
    ({"stride": (2, 2), "out_spatial": (16, 16)}, "strided"),
    ({"dilation": (2, 2), "out_spatial": (30, 30)}, "dilated"),
    ({"groups": 2}, "grouped"),
    ({"kernel": (1, 1), "pads": ((0, 0), (0, 0))}, "1x1"),
    ({"kernel": (5, 5), "pads": ((2, 2), (2, 2))}, "5x5"),
    ({"in_plain": True, "ib": 1}, "plain input"),
])
def test_direct_kernel_where_winograd_does_not_apply(changes, why):
    from cnncompiler.backends.cpu.winograd import choose_conv_algorithm, eligible

    geo = geometry(64, 64, (32, 32), **changes)
    assert eligible(geo) is not None, why
    assert choose_conv_algorithm(geo) == 0, why


def test_winograd_where_it_wins():
    from cnncompiler.backends.cpu.winograd import choose_conv_algorithm

    assert choose_conv_algorithm(geometry(64, 64, (32, 32))) in (2, 4)
    assert choose_conv_algorithm(geometry(16, 16, (32, 32))) == 0  # few channels: direct
    # the measured choices of ResNet-18's 3x3 layers (the table in backends/cpu/winograd.py)
    assert choose_conv_algorithm(geometry(128, 128, (16, 16))) == 4
    assert choose_conv_algorithm(geometry(256, 256, (14, 14))) == 2  # F(4): 16 tiles, big weights
    # GoogLeNet's 4e: F(4)'s 16 tiles overhang the 14 x 14 output, 0.73 of F(2)'s products
    assert choose_conv_algorithm(geometry(160, 320, (14, 14))) == 2
    assert choose_conv_algorithm(geometry(160, 320, (16, 16))) == 4  # 16 tiles that fit
    assert choose_conv_algorithm(geometry(512, 512, (7, 7))) == 2   # 16 F(2) tiles
    assert choose_conv_algorithm(geometry(256, 256, (8, 8))) == 2
    assert choose_conv_algorithm(geometry(512, 512, (4, 4))) == 0   # 4 tiles: direct
    # VGG's: 16.8 MB of F(2) weights for 49 tiles, read once per image since tasks split
    # the output channels
    assert choose_conv_algorithm(geometry(512, 512, (14, 14))) == 2
    assert choose_conv_algorithm(geometry(512, 512, (28, 28))) == 4


def test_weight_layout_checks_what_it_transforms():
    w = np.random.default_rng(0).standard_normal((20, 33, 3, 3)).astype(np.float32)
    u = apply_layout("winograd:4:16:16", w)
    assert u.shape == layout_shape("winograd:4:16:16", w.shape) == (36, 2, 3, 16, 16)
    assert not u[:, -1, :, :, 4:].any() and not u[:, :, -1, 1:, :].any()  # padding is zero
    with pytest.raises(ArtifactError, match=r"needs a 3x3 conv weight.*\(20, 33, 5, 5\)"):
        apply_layout("winograd:4:16:16", np.zeros((20, 33, 5, 5), np.float32))
    with pytest.raises(ArtifactError, match="tile size in"):
        layout_shape("winograd:3:16:16", w.shape)
    with pytest.raises(ArtifactError, match="unknown weight layout"):
        layout_shape("winograd:4:x:16", w.shape)


# -- whole models: epilogues, the manifest, a saved artifact ----------------------------------

def conv(name, filters, **keys):
    return {"name": name, "type": "conv2d", "filters": filters, "kernel": 3, "padding": 1,
            **keys}


SPEC = yaml.safe_dump({"name": "winograd_epilogues", "input": [3, 11, 9], "layers": [
    conv("stem", 40),
    {"name": "stem_relu", "type": "relu"},
    conv("c_bn", 48, bias=False), {"name": "bn", "type": "batchnorm"},
    {"name": "bn_relu", "type": "relu"},
    conv("res", 40, bias=False), {"name": "res_bn", "type": "batchnorm"},
    {"name": "add", "type": "add", "inputs": ["res_bn", "stem_relu"]},
    {"name": "add_relu", "type": "relu"},
    conv("plain", 36, inputs=["add_relu"]), {"name": "tanh", "type": "tanh"},
], "outputs": ["tanh", "bn_relu"]}, sort_keys=False)
WINOGRAD_NODES = {"c_bn", "res", "plain"}


@pytest.fixture(scope="module", params=[2, 4], ids=["F2", "F4"])
def artifact(request, tmp_path_factory):
    """The spec compiled with every eligible conv on one tile size, saved and loaded back."""
    import cnncompiler as cc
    from cnncompiler.backends.cpu import plan
    from cnncompiler.backends.cpu.winograd import eligible

    saved = plan.choose_conv_algorithm
    plan.choose_conv_algorithm = lambda geo: request.param if eligible(geo) is None else 0
    try:
        out = tmp_path_factory.mktemp(f"winograd_f{request.param}")
        path = out / "spec.yaml"
        path.write_text(SPEC)
        model = cc.compile(str(path), target="cpu", output_dir=out / "model")
    finally:
        plan.choose_conv_algorithm = saved
    return request.param, model, out / "model"


def lively(model):
    from cnncompiler.reference import init_params

    params = init_params(model.graph, 3)
    rng = np.random.default_rng(4)
    for name, value in params.items():
        if name.endswith("running_var"):
            params[name] = rng.uniform(0.5, 2.0, value.shape).astype(np.float32)
        elif name.endswith("running_mean") or name.endswith("bias"):
            params[name] = rng.normal(0, 0.3, value.shape).astype(np.float32)
    return params


def test_fused_epilogues_match_reference(artifact):
    """bias, batch norm + ReLU, batch norm + residual add + ReLU, tanh: in the Winograd
    kernel's epilogue, as in the direct kernel's."""
    from cnncompiler.reference import run_reference

    m, model, _ = artifact
    model.load_params(lively(model))
    x = np.random.default_rng(0).standard_normal((3, 3, 11, 9)).astype(np.float32)
    want = run_reference(model.graph, x, model.params, dtype=np.float64)
    got = model.predict(x)
    for name in ("tanh", "bn_relu"):
        assert_close(got[name], want[name], what=f"{name} F({m}x{m}, 3x3)")


def test_manifest_records_the_layout_and_a_loaded_artifact_reproduces(artifact):
    import cnncompiler as cc

    m, model, directory = artifact
    model.load_params(lively(model))
    model.save(directory)
    layouts = {a["name"]: a.get("layout") for a in model.manifest["kernel_args"]}
    loaded = cc.load(directory)
    winograd = {n.split(":")[0] for n, lay in
                {a["name"]: a.get("layout") for a in loaded.manifest["kernel_args"]}.items()
                if lay and lay.startswith(f"winograd:{m}:")}
    assert winograd == WINOGRAD_NODES, layouts
    assert loaded.manifest["build"]["kernels"].get("winograd") == len(WINOGRAD_NODES)
    x = np.random.default_rng(1).standard_normal((2, 3, 11, 9)).astype(np.float32)
    first, again = model.predict(x), loaded.predict(x)
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])


def test_corrupt_weights_are_refused(artifact, tmp_path):
    """The transformed weights come from the artifact's checked weights: a changed weights
    file is refused by its hash before any layout is applied, as for the blocked layout."""
    import shutil

    import cnncompiler as cc

    _, _, directory = artifact
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    weights = copy / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8:] = b"\x7f" * 8
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="weights.safetensors"):
        cc.load(copy)
