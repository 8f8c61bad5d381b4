"""Which kernel computes each layer on the CPU, and in which layout each value lives.

The blocked layout is carried from layer to layer: a conv writes NC[b]c, and the pools,
activations, batch norms and adds after it read and write it as it is, so the data is only
converted where a layer needs the plain layout (flatten, dense, softmax, concat, ...) and at
the model's output. The model's input stays plain: the first conv reads it directly.

    plan = plan_kernels(g, lanes=16)  # AVX-512: 16 float32 lanes
    plan["layer1.0.conv1"].kind        # 'conv'
    plan["layer1.0.conv1"].out_block   # 16
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import networkx as nx

from cnncompiler.graph import layer_node, topo_layers
from cnncompiler.graph.signature import prepared_shapes
from cnncompiler.layers.fused import Fused
from cnncompiler.layers.window import resolve_padding

from ..rules import rules_for

from .blocking import PLAIN, block_for
from .conv import ConvGeometry, vector_registers
from .conv_pool import absorbs_pool
from .plain_conv import plain_output_pays
from .winograd import choose_conv_algorithm

@dataclass(frozen=True)
class KernelChoice:
    """How one layer is computed: ``kind`` names the kernel family (``generic`` is the NCHW
    lowering of ``te_ops`` with the fallback schedule); ``in_blocks`` the layout each input must
    arrive in (None: as it is); ``layouts`` the packed layout of each kernel argument."""

    kind: str
    out_block: int = PLAIN
    in_blocks: tuple = ()
    layouts: dict = field(default_factory=dict)
    geometry: ConvGeometry | None = None
    note: str = ""
    tile: int = 0   # a Winograd kernel's output tile m (F(m x m, 3 x 3))
    # a kernel writing its output straight into a concat's: (the concat, the first channel
    # block it writes, the concat's channel blocks); see ``assemble_concats``
    into: tuple | None = None
    pool: str | None = None  # a conv computing the pool that reads it too (``absorb_pools``)


def _base(layer):
    return layer.base if isinstance(layer, Fused) else layer


def _residual(layer) -> bool:
    return isinstance(layer, Fused) and layer.has_residual


def conv_geometry(g: nx.DiGraph, node: str, in_block: int, ob: int) -> ConvGeometry:
    data = layer_node(g, node)
    base = _base(data.layer)
    in_shape = layer_node(g, data.inputs[0]).shape
    sizes = tuple(in_shape[1:])
    pads = resolve_padding(base.padding, sizes, base.kernel, base.stride, base.dilation)
    return ConvGeometry(cin=in_shape[0], cout=base.filters,
                        groups=getattr(base, "groups", 1),  # a locally connected layer: 1
                        kernel=tuple(base.kernel), stride=tuple(base.stride),
                        dilation=tuple(base.dilation), pads=tuple(map(tuple, pads)),
                        in_spatial=sizes, out_spatial=tuple(data.shape[1:]),
                        ib=in_block or 1, ob=ob, in_plain=in_block == PLAIN)


def _vector_layouts(keys, block: int) -> dict:
    return {k: f"blocked_vector:{block}" for k in keys if k != "weight"}


def choose_conv(g, node, keys, blocks, lanes) -> KernelChoice:
    data = layer_node(g, node)
    layer = data.layer
    base = _base(layer)
    in_block = blocks[data.inputs[0]]
    cin = layer_node(g, data.inputs[0]).shape[0]
    residual = _residual(layer)
    if base.groups == cin and base.filters == cin and cin > 1:
        b = in_block or block_for(cin, lanes)
        geo = conv_geometry(g, node, b, b)
        return KernelChoice("depthwise", b, (b,) + ((b,) if residual else ()),
                            {"weight": f"blocked_oihw:1:{b}", **_vector_layouts(keys, b)},
                            geo)
    if base.groups == cin and base.filters > cin and cin > 1:
        return _depthwise_multiplier(g, node, keys, in_block, base.filters, lanes, residual)
    why = ""
    # a grouped conv whose groups split the input's blocks reads the input plain instead
    for source in dict.fromkeys((in_block, PLAIN)):
        for ob in dict.fromkeys((block_for(base.filters, lanes), lanes // 2, lanes // 4)):
            geo = conv_geometry(g, node, source, ob)
            why = geo.supported()
            if why is None:
                layouts = {"weight": f"blocked_oihw:{geo.ib}:{ob}", **_vector_layouts(keys, ob)}
                return KernelChoice("conv", ob, (source,) + ((ob,) if residual else ()),
                                    layouts, geo)
    return KernelChoice("generic", note=f"no blocked conv kernel: {why}")


def _depthwise_multiplier(g, node, keys, in_block: int, filters: int, lanes: int,
                          residual: bool) -> KernelChoice:
    """A depthwise conv with a channel multiplier (``filters`` a multiple of its input
    channels, one group each): its input's channels repeated to ``filters`` by a kernel of
    their own (``blocking.repeat_channels``), then the depthwise kernel over them. Its
    geometry is the depthwise kernel's: ``filters`` channels in and out.

        - {name: dw_x2, type: conv2d, filters: 64, kernel: 3, groups: 32, padding: 1}

    Against te_ops' grouped conv on the generic schedule, a net of a 32 -> 64 at 56 x 56 and
    a 64 -> 256 stride-2 one: 0.40 / 0.47 of the time at batch 1 / 8 with the input repeated
    whole first, 0.34 / 0.31 with each task repeating the rows it reads
    (``emit.emit_depthwise_multiplier`` says where).
    """
    b = block_for(filters, lanes)
    geo = replace(conv_geometry(g, node, b, b), cin=filters, groups=filters)
    return KernelChoice("depthwise_multiplier", b, (in_block,) + ((b,) if residual else ()),
                        {"weight": f"blocked_oihw:1:{b}", **_vector_layouts(keys, b)}, geo)


def choose_kernel(g: nx.DiGraph, node: str, blocks: dict, lanes: int, keys,
                  training: bool = False) -> KernelChoice:
    """The kernel for ``node``, its inputs in the layouts ``blocks`` (node -> block), from the
    CPU family its layer type declares (``rules``). Training computes batch norms on batch
    statistics and dropout with masks, so those families choose differently there."""
    layer = layer_node(g, node).layer
    family = rules_for(layer, node).cpu
    if family == "fused":
        family = rules_for(layer.base, node).cpu
    return FAMILIES[family](g, node, blocks, lanes, keys, training)


def _first_block(g, node, blocks) -> int:
    inputs = layer_node(g, node).inputs
    return blocks[inputs[0]] if inputs else PLAIN


def _generic(g, node, blocks, lanes, keys, training) -> KernelChoice:
    first = _first_block(g, node, blocks)
    return KernelChoice("generic", note="" if first == PLAIN else "reads the blocked input "
                        "through a plain view")


def _channel_window(g, node, blocks, lanes, keys, training) -> KernelChoice:
    """A window across the channels (LRN) reads its input converted to the plain layout once,
    where each output row is a vector load per channel of the window; through a plain view of
    blocked channels every row read is a gather. AlexNet, interleaved: 0.949 / 0.955 of the
    time at batch 1 / 8 so, 0.922 / 0.906 with the pools after its LRNs (generic, plain)
    vectorizing their rows too (``schedules.parallel_vectorize``). Its kernel sums each
    output row's window in a row of its own (``schedules.schedule_channel_window``).
    Training keeps the view and te_ops' form, whose gradient te_grad has.

        - {name: norm1, type: lrn, size: 5, alpha: 1.0e-4, beta: 0.75, k: 2.0}
    """
    if training:
        return _generic(g, node, blocks, lanes, keys, training)
    return KernelChoice("channel_window", PLAIN, (PLAIN,))


def _softmax(g, node, blocks, lanes, keys, training) -> KernelChoice:
    """A softmax reads its input converted to the plain layout once, where its reductions
    along the channels run over whole rows of positions as vectors (through a plain view of
    blocked channels each would be a gather); the exponentials are the CPU's vector form.
    Training keeps te_ops' form, whose gradient te_grad has.

        - {name: prob, type: softmax}
    """
    if training:
        return _generic(g, node, blocks, lanes, keys, training)
    return KernelChoice("softmax", PLAIN, (PLAIN,))


def _roi(g, node, blocks, lanes, keys, training) -> KernelChoice:
    """RoI pool and align read plain feature maps and boxes: their kernels gather one box's
    bins at a time, where blocked channels would not help."""
    return KernelChoice("roi", PLAIN, (PLAIN, PLAIN))


def _passthrough(g, node, blocks, lanes, keys, training) -> KernelChoice:
    if training:  # dropout draws its mask there
        return _elementwise(g, node, blocks, lanes, keys, training)
    return KernelChoice("passthrough", _first_block(g, node, blocks))


def _dense(g, node, blocks, lanes, keys, training) -> KernelChoice:
    residual = _residual(layer_node(g, node).layer)
    return KernelChoice("dense", PLAIN, (PLAIN,) * (2 if residual else 1),
                        {"weight": f"blocked_rows:{lanes}"})


def _conv(g, node, blocks, lanes, keys, training) -> KernelChoice:
    choice = choose_conv(g, node, keys, blocks, lanes)
    if choice.kind == "depthwise_multiplier" and training:  # te_grad has its gradient
        return _generic(g, node, blocks, lanes, keys, training)
    if choice.kind != "conv":
        return choice
    if not training and plain_output_pays(choice.geometry, lanes):
        return _plain_conv(g, node)
    return with_algorithm(choice, choose_conv_algorithm(choice.geometry))


def _plain_conv(g, node) -> KernelChoice:
    """A conv on a plain input with fewer filters than vector lanes, computed and written in
    the plain layout (``plain_conv``), its weights as they are. Training keeps the blocked
    kernel, whose input-gradient and weight-gradient kernels it has.

        - {name: c1, type: conv2d, filters: 6, kernel: 5}      # LeNet-5: 1x32x32 -> 6x28x28
    """
    residual = _residual(layer_node(g, node).layer)
    return KernelChoice("plain_conv", PLAIN, (PLAIN,) * (2 if residual else 1),
                        geometry=conv_geometry(g, node, PLAIN, 1))


def _locally_connected(g, node, blocks, lanes, keys, training) -> KernelChoice:
    """A locally connected layer reads its input in the layout it arrives in and writes the
    blocked one, its weights packed per output position (``local``); its bias, one value per
    filter and position, blocked by filters. Training keeps te_ops' form, whose gradient
    te_grad has.

        - {name: lc, type: locally_connected2d, filters: 32, kernel: 3}
    """
    if training:
        return _generic(g, node, blocks, lanes, keys, training)
    data = layer_node(g, node)
    in_block = blocks[data.inputs[0]]
    ob = block_for(_base(data.layer).filters, lanes)
    geo = conv_geometry(g, node, in_block, ob)
    residual = _residual(data.layer)
    return KernelChoice("locally_connected", ob, (in_block,) + ((ob,) if residual else ()),
                        {"weight": f"blocked_local:{geo.ib}:{ob}", **_vector_layouts(keys, ob)},
                        geo)


def with_algorithm(choice: KernelChoice, tile: int) -> KernelChoice:
    """``choice`` (a direct conv) computed by Winograd F(tile x tile, 3 x 3) instead, its
    weights transformed at load time (a training step transforms them every step, and
    ``layouts`` are not used there); ``tile`` 0 keeps the direct kernel."""
    if not tile:
        return choice
    geo = choice.geometry
    return replace(choice, kind="winograd", tile=tile,
                   layouts={**choice.layouts, "weight": f"winograd:{tile}:{geo.ib}:{geo.ob}"})


def _window_pool(kind: str):
    def choose(g, node, blocks, lanes, keys, training) -> KernelChoice:
        first = _first_block(g, node, blocks)
        if first == PLAIN:
            return _generic(g, node, blocks, lanes, keys, training)
        return KernelChoice(kind, first, (first,))
    return choose


def _blur_pool(g, node, blocks, lanes, keys, training) -> KernelChoice:
    """A blur pool on a blocked input: the separable pool kernel, its taps the filter's.
    Training keeps te_ops' form, whose gradient te_grad has.

        - {name: down, type: blurpool2d, kernel: 3, stride: 2}
    """
    if training:
        return _generic(g, node, blocks, lanes, keys, training)
    return _window_pool("blur_pool")(g, node, blocks, lanes, keys, training)


def _elementwise(g, node, blocks, lanes, keys, training) -> KernelChoice:
    first = _first_block(g, node, blocks)
    layouts = _vector_layouts(keys, first) if first != PLAIN else {}
    return KernelChoice("elementwise", first, (first,) * len(layer_node(g, node).inputs), layouts)


def _batchnorm(g, node, blocks, lanes, keys, training) -> KernelChoice:
    if not training:  # a per-channel scale and shift
        return _elementwise(g, node, blocks, lanes, keys, training)
    first = _first_block(g, node, blocks)
    if first == PLAIN or len(layer_node(g, node).shape) < 2:
        return _generic(g, node, blocks, lanes, keys, training)
    return KernelChoice("batchnorm", first, (first,))


def _concat(g, node, blocks, lanes, keys, training) -> KernelChoice:
    first = _first_block(g, node, blocks)
    if training or first == PLAIN or not _concat_keeps_blocks(g, node, blocks, first):
        return _generic(g, node, blocks, lanes, keys, training)
    return KernelChoice("concat", first, (first,) * len(layer_node(g, node).inputs))


# the chooser of each CPU family that rules.py names
FAMILIES = {
    "conv": _conv, "locally_connected": _locally_connected, "dense": _dense,
    "pool": _window_pool("pool"), "blur_pool": _blur_pool,
    "global_pool": _window_pool("global_pool"), "pointwise": _elementwise,
    "softmax": _softmax,
    "add": _elementwise, "batchnorm": _batchnorm, "concat": _concat,
    "passthrough": _passthrough, "roi": _roi, "channel_window": _channel_window,
    "generic": _generic,
}


def _concat_keeps_blocks(g, node, blocks, block: int) -> bool:
    """A concat along the channels of values with the same block, each a whole number of
    blocks, is a concat of blocks: it keeps the layout."""
    data = layer_node(g, node)
    if data.layer.sample_axis(len(data.shape)) != 0:
        return False
    return all(blocks[src] == block and layer_node(g, src).shape[0] % block == 0
               for src in data.inputs)


# the kernels whose output can go to a channel slice of a bigger tensor: one kernel writes
# each element of the layer's output once, and nothing else
SLICE_WRITERS = ("conv", "winograd", "depthwise", "pool")


def writes_own_slice(g: nx.DiGraph, plan: dict, src: str, concat: str) -> bool:
    """Can ``src``'s kernel write its output into ``concat``'s? Where the concat is its only
    reader, it is no model output, and the kernel does not write over a residual instead."""
    choice = plan.get(src)
    return (choice is not None and choice.kind in SLICE_WRITERS
            and not _residual(layer_node(g, src).layer)
            and list(g.successors(src)) == [concat] and src not in g.graph["outputs"])


def assemble_concats(g: nx.DiGraph, plan: dict) -> None:
    """A blocked concat whose every input is a kernel's own output, read by nothing else, is
    assembled where it is made: each of those kernels writes its channel blocks of the
    concat's output, and the concat itself runs no kernel (kind ``assembled``). The inception
    block's four branches then need no copy::

        - {name: inception3a, type: inception, ch1x1: 64, ...}   # branch outputs -> concat

    GoogLeNet at batch 1: its nine concats took 0.3 ms of 7.1 inside a run."""
    for node, choice in list(plan.items()):
        srcs = layer_node(g, node).inputs
        if choice.kind != "concat" or len(set(srcs)) != len(srcs) or \
                not all(writes_own_slice(g, plan, src, node) for src in srcs):
            continue
        counts = [layer_node(g, src).shape[0] // choice.out_block for src in srcs]
        for src, first in zip(srcs, [sum(counts[:i]) for i in range(len(srcs))]):
            plan[src] = replace(plan[src], into=(node, first, sum(counts)))
        plan[node] = replace(choice, kind="assembled")


def absorbed_conv(g: nx.DiGraph, plan: dict, pool: str, lanes: int) -> str | None:
    """The conv whose kernel can compute ``pool`` too (``conv_pool.absorbs_pool``), or None:
    a conv of no residual whose output only the pool reads and is no model output, the pool a
    kernel of its own that writes into no concat."""
    choice = plan[pool]
    data = layer_node(g, pool)
    if choice.kind != "pool" or choice.into is not None or len(data.inputs) != 1:
        return None
    (src,) = data.inputs
    conv = plan.get(src)
    if conv is None or conv.geometry is None or _residual(layer_node(g, src).layer):
        return None
    if list(g.successors(src)) != [pool] or src in g.graph["outputs"]:
        return None
    return src if absorbs_pool(conv, data.layer, vector_registers(lanes)) else None


def absorb_pools(g: nx.DiGraph, plan: dict, lanes: int) -> None:
    """A pool right after a conv, where the conv's kernel can compute it (``absorbed_conv``),
    is computed there (kinds ``conv_pool`` and ``winograd_pool``, ``conv_pool.py``): the
    conv's output is never written out, and the pool runs no kernel of its own (kind
    ``absorbed``). ResNet-18 ImageNet plans 3.7 MiB of activations at batch 1 so, 5.1
    without."""
    for node in list(plan):
        conv = absorbed_conv(g, plan, node, lanes)
        if conv is not None:
            plan[conv] = replace(plan[conv], kind=f"{plan[conv].kind}_pool", pool=node)
            plan[node] = replace(plan[node], kind="absorbed")


def plan_kernels(g: nx.DiGraph, lanes: int) -> dict[str, KernelChoice]:
    """A kernel choice for every layer of the optimised graph."""
    blocks = {name: PLAIN for name in g.graph["inputs"]}
    plan = {}
    for node in topo_layers(g):
        if node in blocks:
            continue
        choice = choose_kernel(g, node, blocks, lanes, sorted(prepared_shapes(g, node)))
        plan[node] = choice
        blocks[node] = choice.out_block
    assemble_concats(g, plan)
    absorb_pools(g, plan, lanes)
    return plan
