# The backend image: all-in-one by default (`ml-backend serve`: web app + one worker + an embedded Redis), or one
# role per container as in docker-compose.yml (`ml-backend serve --no-worker` and `ml-backend worker`, with REDIS_URL).
#   docker build -t al-ml-backend .
# torch comes from PyTorch's CPU wheel index (PyPI's Linux wheel is the CUDA build, several GB); for a GPU build:
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 -t al-ml-backend .
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
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
 && pip install --index-url "$TORCH_INDEX_URL" "torch==2.13.0" \
 && pip install ".[s3]" \
 && pip uninstall -y al-ml-backend && rm -rf ml_backend
COPY ml_backend ./ml_backend
COPY model_configs ./model_configs
RUN pip install --no-deps . && useradd --create-home --uid 1000 backend && mkdir -p /data && chown backend /data
USER backend
VOLUME ["/data"]
EXPOSE 9090
# the web role's check (sends Basic auth when it is configured); a worker container disables it (see compose)
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import base64,os,sys,urllib.request as u; \
c=os.environ.get('BASIC_AUTH_USER'); r=u.Request('http://127.0.0.1:9090/health'); \
c and r.add_header('Authorization','Basic '+base64.b64encode(f\"{c}:{os.environ['BASIC_AUTH_PASS']}\".encode()).decode()); \
sys.exit(u.urlopen(r, timeout=2).status != 200)"
CMD ["ml-backend", "serve", "--host", "0.0.0.0", "--port", "9090"]
