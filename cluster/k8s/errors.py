"""Errors of the KubeRay renderer and the kubernetes client: each names the object, the field and the fix."""

from __future__ import annotations

from serve_app.errors import FleetserveError

__all__ = ["K8sError", "RenderError", "SchemaError"]


class K8sError(FleetserveError):
    """A manifest that cannot be rendered, validated, applied or read back."""


class RenderError(K8sError):
    """The config cannot be turned into a KubeRay manifest; `field` is the config path at fault."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class SchemaError(K8sError):
    """A manifest breaks its CRD schema; `problems` is a list of (manifest path, message)."""

    def __init__(self, what: str, problems: list[tuple[str, str]]):
        self.what = what
        self.problems = problems
        lines = [f"{what} does not match the KubeRay CRD schema:"] + [f"  {p or '<root>'}: {m}" for p, m in problems]
        super().__init__("\n".join(lines))
