"""Built-in accelerator catalog and the lookup that also sees the accelerators a config defines.

Numbers are datasheet figures: dense bf16 tensor TFLOP/s (no sparsity), memory bandwidth in
GB/s, and the per-direction GPU-to-GPU link (NVLink total / 2, PCIe 4.0/5.0 x16 one way).
Fields that are not from a datasheet are listed in each entry's `estimated`.
"""

from __future__ import annotations

from collections.abc import Iterable

from cluster.planner.errors import PlannerError
from serve_app.schema import AcceleratorSpec

__all__ = ["ACCELERATOR_CATALOG", "AcceleratorSpec", "find_accelerator"]

_PCIE4 = 32.0  # GB/s per direction, x16

ACCELERATOR_CATALOG: dict[str, AcceleratorSpec] = {a.name: a for a in (
    AcceleratorSpec(
        name="A10G", memory_gib=24, bf16_tflops=70, memory_bandwidth_gb_s=600, interconnect="pcie",
        interconnect_gb_s=_PCIE4, ray_accelerator_type="A10G", estimated=("bf16_tflops",),
        notes="AWS G5 variant of the A10 (A10: 125 TFLOP/s); AWS publishes no tensor figure, 70 is the commonly quoted one.",
    ),
    AcceleratorSpec(
        name="L4", memory_gib=24, bf16_tflops=121, memory_bandwidth_gb_s=300, interconnect="pcie",
        interconnect_gb_s=_PCIE4, ray_accelerator_type="L4", notes="NVIDIA L4 datasheet (242 TFLOP/s with sparsity).",
    ),
    AcceleratorSpec(
        name="RTX3080-10GB", memory_gib=10, bf16_tflops=29.8, memory_bandwidth_gb_s=760, interconnect="pcie",
        interconnect_gb_s=_PCIE4,
        notes="GeForce: bf16 with fp32 accumulate runs at half the fp16-accumulate rate (59.5); no P2P, so GPU-to-GPU "
              "traffic goes through host memory.",
    ),
    AcceleratorSpec(
        name="RTX3080-12GB", memory_gib=12, bf16_tflops=30.6, memory_bandwidth_gb_s=912, interconnect="pcie",
        interconnect_gb_s=_PCIE4, notes="70 SMs and a 384-bit bus, else as the 10 GB card.",
    ),
    AcceleratorSpec(
        name="RTX3080-20GB", memory_gib=20, bf16_tflops=29.8, memory_bandwidth_gb_s=760, interconnect="pcie",
        interconnect_gb_s=_PCIE4, estimated=("bf16_tflops", "memory_bandwidth_gb_s"),
        notes="20 GB consumer variant (double-density GDDR6X on the 10 GB card's 320-bit bus); no official datasheet.",
    ),
    AcceleratorSpec(
        name="A100-40GB", memory_gib=40, bf16_tflops=312, memory_bandwidth_gb_s=1555, interconnect="nvlink",
        interconnect_gb_s=300, ray_accelerator_type="A100-40G", notes="A100 SXM4 40GB, NVLink 3 (600 GB/s total).",
    ),
    AcceleratorSpec(
        name="A100-80GB", memory_gib=80, bf16_tflops=312, memory_bandwidth_gb_s=2039, interconnect="nvlink",
        interconnect_gb_s=300, ray_accelerator_type="A100-80G", notes="A100 SXM4 80GB, NVLink 3 (600 GB/s total).",
    ),
    AcceleratorSpec(
        name="H100-80GB", memory_gib=80, bf16_tflops=989, memory_bandwidth_gb_s=3350, interconnect="nvlink",
        interconnect_gb_s=450, ray_accelerator_type="H100", notes="H100 SXM5, NVLink 4 (900 GB/s total).",
    ),
    AcceleratorSpec(
        name="H200-141GB", memory_gib=141, bf16_tflops=989, memory_bandwidth_gb_s=4800, interconnect="nvlink",
        interconnect_gb_s=450, ray_accelerator_type="H200", notes="H200 SXM, NVLink 4 (900 GB/s total).",
    ),
    AcceleratorSpec(
        name="B200", memory_gib=180, bf16_tflops=2250, memory_bandwidth_gb_s=8000, interconnect="nvlink",
        interconnect_gb_s=900, ray_accelerator_type="B200",
        notes="HGX B200 datasheet (180 GB per GPU; announced as 192 GB), NVLink 5 (1.8 TB/s total).",
    ),
)}


def find_accelerator(name: str, extra: Iterable[AcceleratorSpec] = ()) -> AcceleratorSpec:
    """Find an accelerator by name or Ray accelerator type, case-insensitively; `extra` (from config) wins.

    Raises PlannerError listing the known names.
    """
    key = name.strip().lower()
    extra = tuple(extra)
    for spec in (*extra, *ACCELERATOR_CATALOG.values()):
        if key == spec.name.lower():
            return spec
    for spec in (*extra, *ACCELERATOR_CATALOG.values()):
        if spec.ray_accelerator_type and key == spec.ray_accelerator_type.lower():
            return spec
    known = ", ".join([s.name for s in extra] + list(ACCELERATOR_CATALOG))
    raise PlannerError(
        f"accelerator {name!r} is unknown; use one of {known}, or define it under `accelerators:` in the config"
    )
