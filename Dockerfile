# syntax=docker/dockerfile:1
# One image for the API (`taesar serve`, the default command) and the workers
# (`taesar worker`). CPU torch by default:
#   docker build -t taesar-service .
# GPU: the CUDA wheels of torch carry their own CUDA runtime, so the slim base works
# on any host with the NVIDIA container toolkit:
#   docker build -t taesar-service:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
# or build on a CUDA base image (python3 is installed when the base lacks it):
#   docker build --build-arg BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#                --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
ARG BASE=python:3.11-slim
FROM ${BASE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_SPEC=torch==2.13.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DEBIAN_FRONTEND=noninteractive

# CUDA base images come without Python; python:*-slim already has it
RUN if ! python3 -m venv --help >/dev/null 2>&1; then \
        apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch from the chosen index in its own layer: the biggest download, and it changes least
RUN pip install --index-url "${TORCH_INDEX}" "${TORCH_SPEC}"

# the other dependencies next, from pyproject alone, so a code change reuses this layer
WORKDIR /src
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

COPY app ./app
COPY core ./core
COPY models ./models
COPY workers ./workers
RUN pip install --no-deps . && rm -rf /src/build

# never run the service as root; models come in read-only through a volume
RUN useradd --system --uid 10001 --create-home --home-dir /home/taesar taesar \
    && mkdir -p /models && chown taesar /models
USER taesar
WORKDIR /home/taesar

ENV TAESAR_MODEL_DIR=/models \
    TAESAR_REDIS_URL=redis://redis:6379/0
EXPOSE 8000
# no HEALTHCHECK here: the same image runs workers, which serve no HTTP;
# docker-compose.yml probes the API's /healthz
CMD ["taesar", "serve", "--host", "0.0.0.0", "--port", "8000"]
