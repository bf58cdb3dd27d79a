# Images of the HH-VAEM service. (No `# syntax=` line: BuildKit's built-in frontend reads this file, so a build
# needs nothing from Docker Hub beyond the base images.)
#
#   docker build -t hhvaem .                                   serving image, CPU (default target)
#   docker build -t hhvaem:cuda --build-arg DEVICE=cuda .      serving image, CUDA (onnxruntime-gpu)
#   docker build -t hhvaem-trainer --target trainer .          training image: torch (CPU wheel) + the train extra
#
# Behind a registry mirror: --build-arg PYTHON_IMAGE=mirror/python:3.11-slim, TORCH_INDEX_URL=<a PEP 503 index with
# torch's CPU wheel> (docker-compose.yml passes HHVAEM_PYTHON_IMAGE and TORCH_INDEX_URL through).
#
# The serving image holds ONNX Runtime + numpy + the web stack (pyproject's `dependencies`) and no torch: serving
# runs exported ONNX graphs. It runs as an unprivileged user, listens on 8000 and reports health on /healthz.

ARG DEVICE=cpu
ARG PYTHON_IMAGE=python:3.11-slim
# CUDA 12 + cuDNN 9 runtime, what onnxruntime-gpu >= 1.19 is built against.
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
ARG ORT_GPU_VERSION=1.20.1
ARG APP_UID=10001
# torch's CPU wheels (and their dependencies): PyPI's torch would pull GBs of CUDA libraries.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# --------------------------------------------------------------------------------------------------- wheel
# Build the project's wheel once; later stages install it (and only the extras they need).
FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY model ./model
COPY training ./training
COPY app ./app
COPY hhvaem ./hhvaem
RUN pip wheel --no-deps --wheel-dir /wheels .

# ----------------------------------------------------------------------------------------------- CPU runtime
FROM ${PYTHON_IMAGE} AS runtime-cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
COPY --from=wheel /wheels /wheels
# Serving dependencies only: no `[train]` extra, hence no torch. EXTRAS=ray adds Ray (the `hhvaem:ray` image of
# docker-compose.yml's `ray` profile: the Ray head and workers, and the API replicas that submit batch jobs to them).
ARG EXTRAS=""
RUN /opt/venv/bin/pip install "$(ls /wheels/hhvaem-*.whl)${EXTRAS:+[$EXTRAS]}" && rm -rf /wheels

# ---------------------------------------------------------------------------------------------- CUDA runtime
FROM ${CUDA_IMAGE} AS runtime-cuda
ARG ORT_GPU_VERSION
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
COPY --from=wheel /wheels /wheels
# onnxruntime and onnxruntime-gpu install the same `onnxruntime` module and conflict in one environment: install
# the package (which pulls the CPU build), then swap it for the GPU build.
RUN /opt/venv/bin/pip install /wheels/hhvaem-*.whl \
    && /opt/venv/bin/pip uninstall -y onnxruntime \
    && /opt/venv/bin/pip install "onnxruntime-gpu==${ORT_GPU_VERSION}" \
    && rm -rf /wheels

# --------------------------------------------------------------------------------------------------- trainer
# One-shot training jobs: `hhvaem train DATA --target COL --out /models/NAME`, or `hhvaem demo --train-only`.
FROM ${PYTHON_IMAGE} AS trainer
ARG APP_UID
ARG TORCH_INDEX_URL
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
# torch first, pinned, from the CPU wheel index: an unpinned torch from PyPI would pull GBs of CUDA libraries.
RUN pip install torch==2.13.0 --index-url ${TORCH_INDEX_URL}
COPY --from=wheel /wheels /wheels
RUN pip install "$(ls /wheels/hhvaem-*.whl)[train]" && rm -rf /wheels
RUN useradd --system --uid ${APP_UID} --create-home --shell /usr/sbin/nologin hhvaem \
    && mkdir -p /models /data \
    && chown hhvaem /models
USER hhvaem
WORKDIR /home/hhvaem
ENTRYPOINT ["hhvaem"]
CMD ["train", "--help"]

# ---------------------------------------------------------------------------------------------------- serve
# The default target (last stage): the serving image for DEVICE=cpu|cuda.
FROM runtime-${DEVICE} AS serve
ARG APP_UID
ARG DEVICE
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HHVAEM_DATA_DIR=/var/lib/hhvaem \
    HHVAEM_DEVICE=auto
RUN useradd --system --uid ${APP_UID} --create-home --shell /usr/sbin/nologin hhvaem \
    && mkdir -p /var/lib/hhvaem /models \
    && chown hhvaem /var/lib/hhvaem /models
USER hhvaem
WORKDIR /home/hhvaem
EXPOSE 8000
LABEL org.opencontainers.image.title="hhvaem" \
      org.opencontainers.image.description="HH-VAEM imputation, prediction and feature acquisition service (${DEVICE})"
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
ENTRYPOINT ["hhvaem"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
