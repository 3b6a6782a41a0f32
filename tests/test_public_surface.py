"""The floors of the house: the config schema imports no heavy library, and nothing reaches behind a public surface."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("ray", "vllm", "locust", "gevent")
# Packages whose code ships (tests may reach into internals to check them).
SHIPPED = ("serve_app", "cluster", "loadtest", "fleetserve", "bench")


@pytest.mark.parametrize("module", ["serve_app.schema", "serve_app.config", "cluster.planner", "serve_app.autoscaling"])
def test_importing_a_pure_package_alone_loads_no_ray_vllm_or_locust(module):
    code = (f"import sys, {module}\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"importing {module} loaded {out.stdout.strip()}"


def _dotted(node: ast.AST) -> str:
    """`a.b.c` of a Name/Attribute chain ('' for anything else)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _reaches(tree: ast.AST, rel: str) -> list[tuple[int, str]]:
    """(line, what) for every import or attribute of `tree` that reaches behind a public surface."""
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Attribute):
            names = [_dotted(node)]
        for name in names:
            if name.startswith("ray.serve._private") or name == "ray.serve._private":
                found.append((node.lineno, f"Ray Serve's private modules: {name}"))
            elif name.endswith(("serve._run", "serve._run_many")):
                found.append((node.lineno, f"Serve's private deploy (use serve.run / serve.run_many): {name}"))
            elif name.endswith(("_get_global_client", "._controller")):
                found.append((node.lineno, f"the Serve client's private controller handle: {name}"))
            elif re.match(r"serve_app\.config\._(?!_)", name):
                found.append((node.lineno, f"the config package's private modules (use serve_app.schema): {name}"))
            elif re.match(r"serve_app\.schema\._(?!_)", name) and not rel.startswith("serve_app/schema/"):
                found.append((node.lineno, f"the schema's private modules (use serve_app.schema): {name}"))
    return sorted(set(found))


def test_no_shipped_module_imports_private_ray_serve_or_config_modules():
    found = []
    for top in SHIPPED:
        for path in sorted((REPO / top).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            found += [f"{rel}:{n}: {what}" for n, what in _reaches(ast.parse(path.read_text()), rel)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("code", [
    "from ray.serve._private.common import X", "import ray.serve._private.common",
    "serve._run(app, _blocking=False)", "from ray.serve.context import _get_global_client",
    "controller = client._controller", "from serve_app.config._schema import AppConfig",
    "from serve_app.schema._base import Frozen",
])
def test_the_check_catches_what_it_forbids(code):
    # The test above must not pass by matching nothing.
    assert _reaches(ast.parse(code), "loadtest/x.py"), code
