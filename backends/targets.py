"""What ``--target`` means: the host CPU through LLVM, or NVIDIA GPUs through CUDA.

    cpu                         LLVM for this machine's CPU (its name and features detected)
    llvm -mcpu=skylake-avx512   LLVM for a named CPU (other -mtriple/-mattr/-num-cores too)
    cuda                        CUDA for sm_90 (Hopper); --arch sm_80 for others
    {"kind": "llvm", ...}       a TVM target as JSON, passed through
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from cnncompiler.errors import CompileError

SIMD_FLAGS = ("sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512cd",
              "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512ifma",
              "avx512vbmi", "avx512_vbmi2", "amx_tile", "amx_bf16", "amx_int8")
DEFAULT_CUDA_ARCH = "sm_90"


@dataclass(frozen=True)
class TargetChoice:
    """A resolved target: ``kind`` is 'cpu' or 'cuda'; ``config`` is TVM's target dict;
    ``precision`` the build's precision policy (``backends.precision``)."""

    kind: str
    config: dict
    host: dict | None = None
    cpu_flags: tuple[str, ...] = ()
    vector_lanes: int = 8
    arch: str | None = None
    extra: dict = field(default_factory=dict)
    precision: str = "fp32"

    def describe(self) -> str:
        if self.kind == "cuda":
            return f"cuda ({self.arch})"
        return f"llvm ({self.config.get('mcpu', 'generic')})"

    @classmethod
    def from_json(cls, data: dict) -> "TargetChoice":
        """The target an artifact's manifest records."""
        return cls(data["kind"], data["tvm"], data.get("host"), tuple(data.get("cpu_flags", ())),
                   data.get("vector_lanes", 8), data.get("arch"))

    def to_json(self) -> dict:
        return {"kind": self.kind, "tvm": self.config, "host": self.host,
                "cpu_flags": list(self.cpu_flags), "vector_lanes": self.vector_lanes,
                "arch": self.arch}


def host_cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def lanes_for(flags) -> int:
    """float32 lanes of the widest vector unit: 16 with AVX-512, 8 with AVX2, else 4."""
    if "avx512f" in flags:
        return 16
    if "avx2" in flags or "avx" in flags:
        return 8
    return 4


def host_llvm() -> dict:
    """LLVM target for this machine: its triple, CPU name and core count."""
    from tvm.target import codegen

    return {"kind": "llvm", "mtriple": codegen.llvm_get_system_triple(),
            "mcpu": codegen.llvm_get_system_cpu(), "num-cores": os.cpu_count() or 1}


def parse_llvm_string(text: str) -> dict:
    """``llvm -mcpu=x -mattr=+a,+b -mtriple=t -num-cores=n`` as a TVM target dict."""
    parts = shlex.split(text)
    config = {"kind": "llvm"}
    for part in parts[1:]:
        m = re.fullmatch(r"--?([a-z\-]+)=(.+)", part)
        if not m:
            raise CompileError(f"cannot read '{part}' in target '{text}'; expected -key=value, "
                               "e.g. llvm -mcpu=skylake-avx512")
        key, value = m.groups()
        if key == "mattr":
            config[key] = value.split(",")
        elif key == "num-cores":
            config[key] = int(value)
        elif key in ("mcpu", "mtriple", "mabi", "opt-level"):
            config[key] = int(value) if key == "opt-level" else value
        else:
            raise CompileError(f"unknown LLVM target option '-{key}' in '{text}'; use -mcpu, "
                               "-mtriple, -mattr or -num-cores")
    return config


def parse_target(text: str, arch: str | None = None) -> TargetChoice:
    """Resolve a ``--target`` value (and ``--arch`` for CUDA)."""
    text = (text or "cpu").strip()
    head = text.split()[0].lower() if text else "cpu"
    if text.startswith("{"):
        try:
            config = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CompileError(f"target '{text}' is not valid JSON: {exc}") from None
        head = str(config.get("kind", "")).lower()
        if head == "llvm":
            return _cpu_choice(config)
        if head == "cuda":
            return _cuda_choice(config.get("arch", arch or DEFAULT_CUDA_ARCH))
        raise CompileError(f"target kind '{head}' is not supported; use cpu (llvm) or cuda")
    if head in ("cpu", "host") and len(text.split()) == 1:
        return _cpu_choice(host_llvm(), detected=True)
    if head == "llvm":
        config = parse_llvm_string(text)
        detected = "mcpu" not in config
        if detected:
            config = host_llvm() | config
        return _cpu_choice(config, detected)
    if head in ("cuda", "nvidia", "gpu"):
        m = re.search(r"-arch=(sm_\d+a?)", text)
        return _cuda_choice(arch or (m.group(1) if m else DEFAULT_CUDA_ARCH))
    raise CompileError(f"unknown target '{text}'; use cpu, \"llvm -mcpu=NAME\" or cuda")


def _cpu_choice(config: dict, detected: bool = False) -> TargetChoice:
    flags = host_cpu_flags() if detected else set()
    needed = tuple(sorted(f for f in SIMD_FLAGS if f in flags))
    mcpu = config.get("mcpu", "")
    lanes = lanes_for(flags) if detected else (
        16 if re.search(r"avx512|znver[45]|sapphire|icelake|cascade|cooper|tiger|skylake-avx512",
                        mcpu) else 8 if mcpu else 4)
    return TargetChoice("cpu", config, None, needed, lanes)


def _cuda_choice(arch: str) -> TargetChoice:
    if not re.fullmatch(r"sm_\d{2,3}a?", arch or ""):
        raise CompileError(f"unknown CUDA architecture '{arch}'; use e.g. sm_80 (A100), "
                           "sm_89 (L4), sm_90 (H100/H200)")
    config = {"kind": "cuda", "arch": arch}
    return TargetChoice("cuda", config, host_llvm(), (), 0, arch)
