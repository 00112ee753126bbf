# The backend image: web app (`ml-backend serve --no-worker`) and worker (`ml-backend worker`) share it.
#   docker build -t al-ml-backend .
# For a smaller CPU-only image, point pip at PyTorch's CPU wheel index:
#   docker build --build-arg PIP_EXTRA_INDEX_URL=<PyTorch CPU index URL> -t al-ml-backend .
FROM python:3.11-slim

ARG PIP_EXTRA_INDEX_URL=""
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATA_DIR=/data \
    MODEL_CONFIGS_DIR=/app/model_configs \
    TORCH_THREADS=1

WORKDIR /app
# dependencies first, so code changes do not reinstall torch
COPY pyproject.toml README.md ./
RUN mkdir ml_backend && touch ml_backend/__init__.py \
 && pip install "torch==2.13.0" \
 && pip install . \
 && pip uninstall -y al-ml-backend && rm -rf ml_backend
COPY ml_backend ./ml_backend
COPY model_configs ./model_configs
RUN pip install --no-deps . && useradd --create-home --uid 1000 backend && mkdir -p /data && chown backend /data
USER backend
VOLUME ["/data"]
EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:9090/health').status != 200)"
CMD ["ml-backend", "serve", "--no-worker", "--host", "0.0.0.0", "--port", "9090"]
