# syntax=docker/dockerfile:1
# Visual search web app: CPU-only, ONNX Runtime, models baked in, nothing downloaded at start.
#
#   docker build -t visual-search .
#   docker run -p 8080:8080 -v search-data:/data visual-search      # http://localhost:8080
#
# BASE_IMAGE: any Debian-like image with Python 3.11 and the venv module. The default is the
# public slim image; tools/container_base.sh builds a local one for offline machines.
# The default image has no torch: the app runs on ONNX Runtime. --build-arg WITH_CLIP=true adds
# the optional CLIP embedder (requirements-clip.txt) with CPU-only torch from TORCH_INDEX_URL
# (~+700 MB; PyPI's default Linux torch would pull ~2.5 GB of CUDA libraries). CLIP downloads its
# weights from the Hugging Face hub at first use: run such an image with -e HF_HUB_OFFLINE=0.
# A private CA for pip (corporate proxy, this project's build machine):
#   --secret id=pip_ca,src=/etc/ssl/certs/ca-certificates.crt
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG PIP_INDEX_URL=""
ARG PIP_EXTRA_INDEX_URL=""
ARG APP_UID=10001
ARG WITH_CLIP=false
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

SHELL ["/bin/sh", "-eu", "-c"]

# Dependencies first: this layer is reused as long as requirements.txt does not change.
# A venv works the same on the slim image (python in /usr/local) and on Debian's python3
# (where pip refuses system-wide installs, PEP 668).
COPY requirements.txt requirements-clip.txt /app/
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi; \
    [ -n "${PIP_INDEX_URL:-}" ] || unset PIP_INDEX_URL; \
    [ -n "${PIP_EXTRA_INDEX_URL:-}" ] || unset PIP_EXTRA_INDEX_URL; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/pip install --no-compile -r /app/requirements.txt; \
    if [ "${WITH_CLIP}" = "true" ]; then \
      /opt/venv/bin/pip install --no-compile --extra-index-url "${TORCH_INDEX_URL}" \
        -r /app/requirements-clip.txt; \
    fi; \
    /opt/venv/bin/python -m compileall -q -j 0 /opt/venv/lib >/dev/null

# Models are committed files; a truncated or swapped file fails the build here, not at start.
COPY models/ /app/models/
WORKDIR /app/models
RUN test -s SHA256SUMS && sha256sum --check --strict SHA256SUMS

# The sample catalogue (GroceryStore iconic images, MIT) that the app indexes on first start.
COPY samples/ /app/samples/
COPY app.py /app/
COPY search_core/ /app/search_core/

WORKDIR /app
RUN python -m compileall -q search_core app.py \
    && groupadd --gid "${APP_UID}" app \
    && useradd --uid "${APP_UID}" --gid app --create-home --no-log-init app \
    && mkdir -p /data \
    && chown app:app /data \
    && python -c "import search_core.server, onnxruntime, gradio"

ENV HOST=0.0.0.0 \
    PORT=8080 \
    SEARCH_DATA_DIR=/data \
    SEARCH_MODELS_DIR=/app/models \
    GRADIO_ANALYTICS_ENABLED=False \
    HF_HUB_DISABLE_TELEMETRY=1 \
    HF_HUB_OFFLINE=1 \
    FORWARDED_ALLOW_IPS=*

# The local index lives here: mount a volume (EFS on ECS) to keep it across restarts.
VOLUME ["/data"]
USER ${APP_UID}:${APP_UID}
EXPOSE 8080

# No curl in slim images: python is there anyway. /ping needs no model, so a slow first model
# load never marks the container unhealthy; readiness (/healthz) is the load balancer's job.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/ping' % os.environ.get('PORT', '8080'), timeout=4)"]

CMD ["python", "app.py"]
