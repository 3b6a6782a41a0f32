"""User-defined accelerators: the numbers the capacity planner needs about one GPU model.

The planner (cluster/planner) ships a catalog of common GPUs built from this same class; an
app config may add its own under `accelerators:` (a new card, a cloud SKU, a logical test GPU).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from serve_app.schema._base import Frozen
from serve_app.errors import FieldError

__all__ = ["AcceleratorSpec", "Accelerators"]


class AcceleratorSpec(Frozen):
    """One accelerator model: memory, dense bf16 compute, memory bandwidth and the link between GPUs of a node."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=64,
                      description='Catalog name used by `--gpu` and `placement.accelerator_type`, e.g. "A100-80GB".')
    memory_gib: float = Field(
        ..., gt=0, le=4096, description='Device memory in GiB (2**30 bytes), as marketed ("80GB" cards hold 80 GiB).'
    )
    bf16_tflops: float = Field(..., gt=0, description="Dense (no sparsity) bf16 tensor throughput in TFLOP/s.")
    memory_bandwidth_gb_s: float = Field(..., gt=0, description="Device memory bandwidth in GB/s (1e9 bytes/s).")
    interconnect: Literal["nvlink", "pcie"] = Field(
        ..., description="Link between GPUs of one node: nvlink (NVLink/NVSwitch) or pcie (through the PCIe switch or host)."
    )
    interconnect_gb_s: float = Field(
        ..., gt=0, description="Per-GPU, per-direction bandwidth of that link in GB/s (NVLink total / 2; PCIe x16 one way)."
    )
    ray_accelerator_type: str | None = Field(
        None,
        description='Ray\'s accelerator_type for this card (ray.util.accelerators), e.g. "A100-80G"; '
        "also accepted as a lookup name.",
    )
    estimated: tuple[str, ...] = Field(
        (), description="Names of the fields above that are estimates rather than datasheet numbers."
    )
    notes: str = Field("", description="Where the numbers come from, or what the estimate assumes.")

    @model_validator(mode="after")
    def _estimated_names_fields(self) -> "AcceleratorSpec":
        unknown = [f for f in self.estimated if f not in type(self).model_fields]
        if unknown:
            raise FieldError(
                "estimated", f"{unknown} are not fields of an accelerator; use names among {sorted(type(self).model_fields)}"
            )
        return self

    @property
    def memory_bytes(self) -> float:
        """Device memory in bytes."""
        return self.memory_gib * 2**30


def _unique_names(specs: tuple[AcceleratorSpec, ...]) -> tuple[AcceleratorSpec, ...]:
    seen: dict[str, int] = {}
    for i, spec in enumerate(specs):
        key = spec.name.lower()
        if key in seen:
            raise FieldError(
                f"[{i}].name", f"{spec.name!r} repeats accelerators[{seen[key]}]; names must be unique (case-insensitive)"
            )
        seen[key] = i
    return specs


Accelerators = Annotated[tuple[AcceleratorSpec, ...], AfterValidator(_unique_names)]
"""A tuple of user accelerators with unique (case-insensitive) names."""
