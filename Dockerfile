# serve: ONNX models over the Open Inference Protocol (HTTP 8000, gRPC 8001); see README "Deploy".
#   docker build -t serve .                                   # the serving image (default target)
#   docker build -t serve-monitor --target monitor .          # the drift monitor
#   podman build --format docker -t serve .                   # podman: OCI format would drop HEALTHCHECK
#   docker run -p 8000:8000 -p 8001:8001 serve                          # the bundled demo models
#   docker run -p 8000:8000 -p 8001:8001 -v $PWD/models:/models serve   # your repository
# Versions come from deploy/constraints.txt (regenerate it as the README says), so two builds install the same.
ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: a wheel of serve, then one virtual environment per image, pip and setuptools removed from each.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
# binutils: strip, for deploy/image/slim-venv.sh (~46 MB of tests and debug sections); no image keeps this stage.
RUN apt-get update && apt-get install -y --no-install-recommends binutils && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY serve ./serve
COPY deploy/constraints.txt ./deploy/constraints.txt
COPY deploy/image/slim-venv.sh /usr/local/bin/slim-venv
RUN python -m pip wheel --no-deps --wheel-dir /wheels .

FROM build AS venv-server
RUN python -m venv /opt/serve \
    && /opt/serve/bin/pip install --constraint deploy/constraints.txt "$(ls /wheels/serve-*.whl)[tracing]" \
    && /opt/serve/bin/pip uninstall --yes pip setuptools \
    && slim-venv /opt/serve \
    && /opt/serve/bin/serve demo-repo /models

FROM build AS venv-monitor
RUN python -m venv /opt/serve \
    && /opt/serve/bin/pip install --constraint deploy/constraints.txt "$(ls /wheels/serve-*.whl)[monitor]" \
    && /opt/serve/bin/pip uninstall --yes pip setuptools \
    && slim-venv /opt/serve

# ---- what both images share: a fixed unprivileged user, no source tree anywhere on the import path.
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/serve/bin:$PATH
# uid/gid 10001 is fixed so that Kubernetes runAsUser/fsGroup and volume ownership can name it.
RUN groupadd --system --gid 10001 serve \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/serve --create-home --shell /usr/sbin/nologin serve
WORKDIR /home/serve

# ---- the drift monitor: `docker run serve-monitor --server http://replica:8000 ...` (serve monitor's flags).
FROM runtime AS monitor
COPY --from=venv-monitor /opt/serve /opt/serve
RUN mkdir -p /var/lib/serve-monitor && chown serve:serve /var/lib/serve-monitor
ENV SERVE_MONITOR_PORT=8010
USER serve
EXPOSE 8010
VOLUME /var/lib/serve-monitor
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request as u; port = os.environ.get('SERVE_MONITOR_PORT', '8010'); sys.exit(0 if u.urlopen(f'http://127.0.0.1:{port}/api/servers', timeout=2).status == 200 else 1)"]
# The shell only expands SERVE_MONITOR_PORT (read by HEALTHCHECK too); arguments given to `docker run` follow.
ENTRYPOINT ["sh", "-c", "exec serve monitor --host 0.0.0.0 --port \"$SERVE_MONITOR_PORT\" --db /var/lib/serve-monitor/monitor.db \"$@\"", "serve-monitor"]

# ---- the server (default target, last): only what serving needs, the demo repository at /models.
FROM runtime AS server
COPY --from=venv-server /opt/serve /opt/serve
COPY --from=venv-server /models /models
ENV SERVE_HOST=0.0.0.0 SERVE_HTTP_PORT=8000 SERVE_GRPC_PORT=8001 SERVE_MODEL_REPOSITORY=/models
USER serve
EXPOSE 8000 8001
# Reads the port (and a specific listen address) the server was configured with, as serve run does.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request as u; host = os.environ.get('SERVE_HOST', '127.0.0.1'); host = '127.0.0.1' if host in ('', '0.0.0.0', '::') else host; port = os.environ.get('SERVE_HTTP_PORT', '8000'); sys.exit(0 if u.urlopen(f'http://{host}:{port}/v2/health/ready', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["serve"]
CMD ["run"]
