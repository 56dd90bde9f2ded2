# serve: ONNX models over the Open Inference Protocol (HTTP 8000, gRPC 8001).
#   docker build -t serve .
#   docker run -p 8000:8000 -p 8001:8001 serve                          # the bundled demo models
#   docker run -p 8000:8000 -p 8001:8001 -v $PWD/models:/models serve   # your repository
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    SERVE_HOST=0.0.0.0 SERVE_HTTP_PORT=8000 SERVE_GRPC_PORT=8001 SERVE_MODEL_REPOSITORY=/models

WORKDIR /opt/serve
COPY pyproject.toml README.md ./
COPY serve ./serve
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /home/serve --create-home serve \
    && mkdir -p /models \
    && serve demo-repo /models \
    && chown -R serve /models

USER serve
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2).status == 200 else 1)"
ENTRYPOINT ["serve"]
CMD ["run"]
