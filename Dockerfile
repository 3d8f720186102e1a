# A first image: the whole Flow in one container (gateway + both executors).
#   docker build -t s2i .
#   docker run --gpus all -p 54321:54321 -p 54322:54322 -v s2i-models:/models s2i
# Weights are not baked in: they download into the /models volume on first start.
FROM python:3.11-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends ffmpeg \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# Dependencies first, so code changes do not reinstall them. The same files and order as scripts/setup.sh.
COPY constraints.txt requirements.txt ./
COPY executors/whisper/requirements.txt executors/whisper/requirements.txt
COPY executors/stable_diffusion/requirements.txt executors/stable_diffusion/requirements.txt
ARG TORCH_VERSION=2.13.0
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" -c constraints.txt \
 && pip install --no-cache-dir -r requirements.txt -c constraints.txt

COPY . .
RUN pip install --no-cache-dir --no-deps -e .

ENV S2I_HOST=0.0.0.0 \
    HF_HOME=/models/huggingface \
    XDG_CACHE_HOME=/models/cache \
    S2I_CACHE=/models/s2i
VOLUME /models
EXPOSE 54321 54322
CMD ["python", "-m", "s2i.serve"]
