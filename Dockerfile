# One image for every part of the service: the whole Flow in one container (the default command),
# or one part per container, as deploy/docker-compose.yml and deploy/kubernetes/ run it:
#   jina gateway --uses config.yml ...    (workdir gateway/)  the gateway, with the token check
#   jina executor --uses executors/whisper/config.yml ...           (or --uses config.yml with
#   jina executor --uses executors/stable_diffusion/config.yml ...   the executor's folder as workdir)
#
#   docker build -t s2i:latest .
#   docker run --gpus all -p 8321:8321 -p 8322:8322 -v s2i-models:/models -e S2I_AUTH_TOKEN=... s2i:latest
#
# Model weights are not in the image: they download into the /models volume on first start.
# --build-arg PRELOAD_MODELS=1 bakes the weights of S2I_SD_MODEL and S2I_WHISPER_MODEL (build args
# too, defaulting to the service's defaults) into /models instead; see README, "Deploy".
# PyPI's torch wheel for Linux bundles its CUDA libraries, so a slim Python base runs on the GPU
# wherever the container is given one (--gpus, or nvidia.com/gpu in Kubernetes). PyPI's torch 2.13.0
# is built for CUDA 13.0 and needs a recent NVIDIA driver on the host; for an older driver, or a
# CPU-only image, take another build from PyTorch's index (README, "Deploy"):
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126   (or .../whl/cpu)
# Nothing here needs BuildKit, so the legacy builder (DOCKER_BUILDKIT=0) builds it offline too.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Both Whisper backends decode audio with PyAV (FFmpeg's libraries in its wheel), so the ffmpeg
# program is not needed; --build-arg INSTALL_FFMPEG=1 adds it (683 MB) for code of your own that
# calls it. A fixed uid, so volumes and securityContext agree.
ARG INSTALL_FFMPEG=""
# hadolint ignore=DL3008
RUN if [ -n "${INSTALL_FFMPEG}" ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends ffmpeg \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && groupadd --gid 1000 s2i \
 && useradd --uid 1000 --gid 1000 --create-home --shell /usr/sbin/nologin s2i \
 && mkdir -p /models \
 && chown s2i:s2i /models

WORKDIR /app

# Dependencies before the code, so a code change reinstalls nothing. The same steps, files and
# order as scripts/setup.sh, less its test tools.
COPY constraints.txt requirements.txt ./
COPY gateway/requirements.txt gateway/requirements.txt
COPY executors/whisper/requirements.txt executors/whisper/requirements.txt
COPY executors/stable_diffusion/requirements.txt executors/stable_diffusion/requirements.txt
COPY executors/store/requirements.txt executors/store/requirements.txt
COPY executors/caption/requirements.txt executors/caption/requirements.txt
COPY executors/clip/requirements.txt executors/clip/requirements.txt
# DL3013: setup.sh upgrades pip unpinned too. DL3059: one layer per step, so a requirements change
# keeps the torch layer (several GB) cached.
# hadolint ignore=DL3013
RUN pip install --upgrade pip
# TORCH_INDEX_URL: another torch build of the same version, e.g. https://download.pytorch.org/whl/cu126
# (pick the CUDA build your driver supports), or .../whl/cpu for a CPU-only image (several GB smaller).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=""
# hadolint ignore=DL3059
RUN pip install "torch==${TORCH_VERSION}" ${TORCH_INDEX_URL:+--index-url "${TORCH_INDEX_URL}"} -c constraints.txt
# hadolint ignore=DL3059
RUN pip install -r requirements.txt -c constraints.txt
COPY pyproject.toml ./
COPY s2i/ s2i/
COPY gateway/ gateway/
COPY executors/ executors/
RUN pip install --no-deps -e .

# Results (the store executor) go into the same volume as the weights unless S2I_STORE says otherwise
# (an s3:// bucket, another mounted folder, or none).
ENV HF_HOME=/models/huggingface \
    XDG_CACHE_HOME=/models/cache \
    S2I_CACHE=/models/s2i \
    S2I_STORE=/models/results \
    S2I_HOST=0.0.0.0

# Off by default: weights belong in the volume. PRELOAD_MODELS=1 bakes them in (an offline cluster).
ARG PRELOAD_MODELS=""
ARG S2I_SD_MODEL=""
ARG S2I_WHISPER_MODEL=""
ARG S2I_WHISPER_BACKEND=""
COPY deploy/preload.py deploy/preload.py
USER 1000:1000
RUN if [ -n "${PRELOAD_MODELS}" ]; then python deploy/preload.py; fi

COPY flow.yml client.py ./

VOLUME /models
EXPOSE 8321 8322
# The default command's Flow; a gateway started on that port answers it too.
HEALTHCHECK --interval=30s --timeout=20s --start-period=10m --retries=3 \
    CMD ["sh", "-c", "jina ping flow grpc://127.0.0.1:${S2I_PORT:-8321} --timeout 10000"]
CMD ["python", "-m", "s2i.serve"]
