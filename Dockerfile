# syntax=docker/dockerfile:1
# socketio-service image: `socketio-service` (same as `socketio-service serve`) on port 3000.

ARG PYTHON_IMAGE=python:3.12.12-slim-bookworm

# ---- builder: a virtualenv with the dependencies (own layer), then the project ----
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /build
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# Dependencies change less often than the code: install exactly the pinned list from
# pyproject.toml first, so code edits reuse this layer.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && pip install --no-cache-dir -r requirements.txt

COPY README.md ./
COPY service ./service
RUN pip install --no-cache-dir --no-deps . \
    && python -m compileall -q /opt/venv

# ---- runtime: slim base + the venv, numeric non-root user ----
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="socketio-service" \
      org.opencontainers.image.description="Horizontally scalable Socket.IO messaging service" \
      org.opencontainers.image.licenses="MIT"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    PORT=3000
COPY --from=builder /opt/venv /opt/venv
WORKDIR /tmp
EXPOSE 3000
# Numeric UID:GID so the kubelet can verify runAsNonRoot.
USER 10001:10001
# JSON form: the Python process is PID 1 and receives SIGTERM directly (graceful drain).
ENTRYPOINT ["socketio-service"]
