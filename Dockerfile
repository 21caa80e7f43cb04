# syntax=docker/dockerfile:1
#
# The eva runtime image: the `eva` CLI that every step pod of an EvaRun runs
# (`eva phase STEP ...`, see operator/eva_operator/jobs.py), with vLLM, PyTorch (CUDA),
# transformers, TRL, PEFT, accelerate, DeepSpeed and MLflow: the project's `gpu` extra.
#
# Build from the repository root:
#
#   docker build -t ghcr.io/eva-platform/eva-runtime:0.1.0 .
#
# The operator image is operator/Dockerfile. Base images are pinned by exact tag here; the
# release pipeline should pin them by digest as well
# (nvidia/cuda:13.0.2-base-ubuntu24.04@sha256:...) so that a rebuilt tag never changes the image.
#
# Versions. vLLM 0.33.0 pins torch 2.14.0, whose wheels are built for CUDA 13.0 and bring
# the CUDA user-space libraries (cuBLAS, cuDNN, NCCL, ...) as pip packages. The base image is
# therefore CUDA 13.0's `base` flavour (cudart and the NVIDIA container settings only): a
# `runtime` or `cudnn-runtime` base would add a second copy of libraries that torch never
# loads. Nodes need an NVIDIA driver for CUDA 13.0 (>= 580); the base image's
# NVIDIA_REQUIRE_CUDA makes the container runtime refuse older drivers with a clear error.
# Python is Ubuntu 24.04's own python3.12 (the distribution's package, no PPA).
# No credentials at build time: hub tokens and API keys reach step pods as Secret-backed
# environment variables at run time (spec.credentials), never as build arguments.

# --------------------------------------------------------------------------- builder
FROM nvidia/cuda:13.0.2-base-ubuntu24.04 AS builder

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG DEBIAN_FRONTEND=noninteractive

# Ubuntu's security updates must land on rebuilds, and the archive drops superseded
# versions, so exact apt versions would break the build after the next update; the base
# image tag (and digest in the release pipeline) fixes the distribution release instead.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates python3.12 python3.12-venv \
    && rm -rf /var/lib/apt/lists/*

ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN python3.12 -m venv /opt/venv \
    && pip install --no-cache-dir pip==26.3

# 1. vLLM first, alone: it pins the exact torch (and torchvision, triton, flashinfer, CUDA
#    wheels) it was built and tested against. Its own layer also keeps the ~10 GB download
#    cached while the project's code changes. The versions it brought are frozen into a
#    constraints file for step 3.
RUN pip install --no-cache-dir vllm==0.33.0 \
    && mkdir -p /build \
    && pip freeze \
        | grep -iE '^(vllm|torch|torchvision|torchaudio|triton|transformers|tokenizers|flashinfer[a-z0-9-]*|nvidia-[a-z0-9-]*|cuda-[a-z0-9-]*)==' \
        > /build/vllm-constraints.txt

# 2. The project as a wheel (built from the repository, not installed in place).
WORKDIR /src
COPY pyproject.toml README.md ./
COPY eva_runtime ./eva_runtime
COPY operator/eva_operator ./operator/eva_operator
RUN pip wheel --no-cache-dir --no-deps . -w /wheels

# 3. The project with its `gpu` extra (train: transformers, TRL, PEFT, accelerate, datasets,
#    MLflow, ...), TRL and DeepSpeed (solver.deepspeed: zero3), in one resolve that names vLLM
#    again and is bound by the constraints of step 1: pip does not consider an installed
#    package's requirements unless it is part of the request, so without both it could
#    "upgrade" torch or transformers past what vLLM supports (e.g. for a newer trl or peft).
#    DeepSpeed ships as a source distribution: DS_BUILD_OPS=0 builds no CUDA ops now (they
#    compile just in time if ever used; ZeRO-3 with the trainer's AdamW needs none).
#    `pip check` fails the build on any inconsistency.
RUN DS_BUILD_OPS=0 pip install --no-cache-dir --constraint /build/vllm-constraints.txt \
        vllm==0.33.0 \
        "$(echo /wheels/eva_platform-*.whl)[gpu]" \
        trl==1.16.0 \
        deepspeed==0.19.8 \
    && pip check

# --------------------------------------------------------------------------- final
FROM nvidia/cuda:13.0.2-base-ubuntu24.04

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG DEBIAN_FRONTEND=noninteractive

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="eva-runtime" \
      org.opencontainers.image.description="eva (open-ended RLHF by asymmetric self-play) step image: eva CLI with vLLM, PyTorch, TRL" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="eva-platform" \
      org.opencontainers.image.base.name="docker.io/nvidia/cuda:13.0.2-base-ubuntu24.04"

# python3.12 runs the venv below (same interpreter path as in the builder). Triton, which
# vLLM and torch.compile use, builds small C launchers at run time: it needs a C compiler
# and Python's headers (gcc, libc6-dev, python3.12-dev). Not pinned: see the builder.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates python3.12 python3.12-dev gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# uid/gid 1000 as a named user (torch's caches call getpass.getuser(), which needs a passwd
# entry). Ubuntu 24.04 images ship a user `ubuntu` with uid 1000: it gives way to `eva`.
# /cache is where step pods mount an emptyDir (XDG_CACHE_HOME); owning it lets a plain
# `docker run` work too.
RUN if getent passwd 1000 >/dev/null; then userdel --remove "$(getent passwd 1000 | cut -d: -f1)"; fi \
    && if getent group 1000 >/dev/null; then groupdel "$(getent group 1000 | cut -d: -f1)"; fi \
    && groupadd --gid 1000 eva \
    && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin eva \
    && mkdir -p /cache \
    && chown 1000:1000 /cache

COPY --from=builder /opt/venv /opt/venv

# The same values the operator sets in step pods (jobs.py step_env): a read-only root
# filesystem with writable /tmp and /cache.
ENV PATH=/opt/venv/bin:$PATH \
    VIRTUAL_ENV=/opt/venv \
    HOME=/tmp \
    XDG_CACHE_HOME=/cache \
    HF_HOME=/cache/huggingface \
    EVA_CACHE_DIR=/cache/eva \
    TRITON_CACHE_DIR=/cache/triton \
    NUMBA_CACHE_DIR=/cache/numba \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VLLM_NO_USAGE_STATS=1 \
    HF_HUB_DISABLE_TELEMETRY=1

USER 1000:1000
WORKDIR /tmp

# Step pods serve Prometheus /metrics on this port while a step runs (EVA_METRICS_PORT).
EXPOSE 9090

ENTRYPOINT ["eva"]
CMD ["--help"]
