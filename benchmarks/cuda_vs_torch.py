"""Run cnnc's CUDA artifacts on a GPU and compare them with PyTorch on the same weights.

    # where nvcc is (no GPU needed): one artifact per spec and precision, weights optional
    for s in specs/*.yaml; do n=$(basename $s .yaml)
      cnnc compile $s --target cuda -o build/cuda/$n
      cnnc compile $s --target cuda --precision mixed -o build/cuda/$n.mixed
    done
    # on the GPU machine (TVM's runtime is enough; TVM_SITE may point at a copy of it):
    python benchmarks/cuda_vs_torch.py cuda build/cuda

For each artifact (DIR/<spec> and DIR/<spec>.<anything>; its manifest says its precision):
build the spec's PyTorch twin (tests/torch_models.py), calibrate its batch norms on the input,
write its state_dict as the artifact's weights and re-record the manifest, load it with cnnc's
runtime (TVM runtime only), run, and compare with PyTorch in float64 on the CPU and in float32
on the GPU; time both on the GPU. A spec's fp32 and mixed artifacts are printed side by side,
mixed checked against its bound (MIXED_RTOL of the largest logit, the same top-1). Results go
to $OUT (default /tmp/gpu_out).
"""

import json
import os
import shutil
import statistics
import sys
import time
import traceback
from pathlib import Path

os.environ["TVM_USE_RUNTIME_LIB"] = "1"
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [p for p in (os.environ.get("TVM_SITE"), str(ROOT), str(ROOT / "tests")) if p]

import numpy as np  # noqa: E402
import torch  # noqa: E402

import cnncompiler as cc  # noqa: E402
from cnncompiler.runtime import artifact as art  # noqa: E402
from cnncompiler.runtime.weights import write_weights  # noqa: E402
from torch_models import BUILDERS  # noqa: E402

DEVICE = sys.argv[1] if len(sys.argv) > 1 else "cuda"
ARTIFACTS = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "build" / "cuda"
OUT = Path(os.environ.get("OUT", "/tmp/gpu_out"))
OUT.mkdir(parents=True, exist_ok=True)
WORK = Path("/tmp/cnnc_gpu_work")
BATCHES = (1, 16)
MIXED_RTOL = 1e-2  # README, Compiling: mixed against float64, relative to the largest logit


def lively(model, x):
    """Batch norms get the statistics of x and random scales, so deep nets stay lively."""
    bns = [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))]
    g = torch.Generator().manual_seed(1)
    for m in bns:
        m.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(x)
        for m in bns:
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    model.eval()


def time_it(fn, repeat=20, warmup=5):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def check(name):
    src = ARTIFACTS / name
    work = WORK / name
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(src, work)
    torch.manual_seed(0)
    stem = name.split(".")[0]
    model = BUILDERS[stem]()
    manifest = json.loads((work / art.MANIFEST).read_text())
    precision = manifest.get("precision", "fp32")
    shape = manifest["input"]["shape"][1:]
    batch = 2
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((batch, *shape)).astype(np.float32))
    lively(model, x)
    params = {k: v.detach().numpy() for k, v in model.state_dict().items()
              if not k.endswith("num_batches_tracked")}
    write_weights(work / art.WEIGHTS, params)
    art.write_manifest(work, manifest)  # re-record the new weights' hash
    compiled = cc.load(work, device=DEVICE)
    xn = np.ascontiguousarray(x.numpy())
    ours = compiled.predict(xn)
    with torch.no_grad():
        want64 = model.double()(x.double()).numpy()
        model.float()
        dev = torch.device(DEVICE)
        tm = model.to(dev)
        xd = x.to(dev)
        want32 = tm(xd).float().cpu().numpy()
    scale = max(np.abs(want64).max(), 1e-12)
    row = {"spec": stem, "precision": precision,
           "max_rel_err_vs_fp64": float(np.abs(ours - want64).max() / scale),
           "max_rel_err_vs_torch_fp32": float(np.abs(ours - want32).max() / scale),
           "same_top1": bool((ours.argmax(-1) == want64.argmax(-1)).all())}
    if precision == "mixed":
        row["within_bound"] = row["max_rel_err_vs_fp64"] < MIXED_RTOL and row["same_top1"]
    for b in BATCHES:
        xb = np.ascontiguousarray(np.repeat(xn, b // batch + 1, axis=0)[:b])
        xt = torch.from_numpy(xb).to(dev)

        def torch_run():
            with torch.no_grad():
                tm(xt)
            if DEVICE == "cuda":
                torch.cuda.synchronize()

        row[f"cnnc_ms_b{b}"] = time_it(lambda: compiled.predict(xb))
        row[f"torch_ms_b{b}"] = time_it(torch_run)
    return row


def main():
    # a spec's artifacts together, fp32 ("resnet18") before mixed ("resnet18.mixed")
    names = sorted((p.name for p in ARTIFACTS.iterdir() if (p / "manifest.json").exists()),
                   key=lambda n: (n.split(".")[0], n))
    rows = []
    for name in names:
        try:
            row = check(name)
        except Exception as exc:  # keep going: one failure must not hide the others
            row = {"spec": name, "error": f"{type(exc).__name__}: {exc}",
                   "trace": traceback.format_exc()[-2000:]}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "trace"}), flush=True)
    (OUT / "gpu_results.json").write_text(json.dumps(rows, indent=2))
    times = "".join(f" {'cnnc b' + str(b):>9s} {'torch b' + str(b):>9s}" for b in BATCHES)
    print(f"\n{'spec':20s} {'precision':9s} {'rel err fp64':>12s} {'vs torch32':>10s} "
          f"{'bound':>5s}{times}")
    for r in rows:
        if "error" in r:
            print(f"{r['spec']:20s} ERROR {r['error'][:100]}")
            continue
        bound = {True: "ok", False: "OVER"}.get(r.get("within_bound"), "-")
        print(f"{r['spec']:20s} {r['precision']:9s} {r['max_rel_err_vs_fp64']:12.2e} "
              f"{r['max_rel_err_vs_torch_fp32']:10.2e} {bound:>5s}"
              + "".join(f" {r[f'cnnc_ms_b{b}']:9.3f} {r[f'torch_ms_b{b}']:9.3f}"
                        for b in BATCHES))


if __name__ == "__main__":
    main()
