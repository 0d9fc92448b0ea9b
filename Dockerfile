# syntax=docker/dockerfile:1
# The Async Output Service: `docker build -t async-output-service:0.1.0 .`
# Runs as a non-root user on a read-only root filesystem; data (SQLite) in /data.
# The install steps are deploy/install.sh, which `make test` also runs
# (tests/deploy/test_image.py), since no Docker engine builds this file there.

ARG PYTHON_VERSION=3.11

# ---------------------------------------------------------------- builder
FROM python:${PYTHON_VERSION}-slim-bookworm AS builder
# Store drivers to include: all, or a comma-separated subset (empty: SQLite only).
ARG AOS_EXTRAS=all
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY storage_adapters ./storage_adapters
COPY sharding ./sharding
COPY webhooks ./webhooks
COPY deploy/install.sh /usr/local/bin/aos-install
RUN AOS_EXTRAS="$AOS_EXTRAS" aos-install wheels /src /wheels \
 && AOS_EXTRAS="$AOS_EXTRAS" aos-install venv /opt/aos /wheels

# ---------------------------------------------------------------- runtime
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="async-output-service" \
      org.opencontainers.image.description="Run long jobs and deliver their output asynchronously" \
      org.opencontainers.image.licenses="Apache-2.0"
# The virtual environment is self-contained (same interpreter path in both stages).
COPY --from=builder /opt/aos /opt/aos
RUN groupadd --system --gid 10001 aos \
 && useradd --system --uid 10001 --gid aos --home-dir /data --no-create-home --shell /usr/sbin/nologin aos \
 && install -d -o aos -g aos -m 0750 /data
ENV PATH=/opt/aos/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AOS_HOST=0.0.0.0 \
    AOS_PORT=8080 \
    AOS_STORAGE_URL=sqlite:////data/aos.db \
    AOS_ADMIN_TOKEN_FILE=/data/.aos-admin-token
WORKDIR /data
VOLUME ["/data"]
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('AOS_PORT', '8080'), timeout=2).status == 200 else 1)"]
# `aos serve` by default; `docker run IMAGE migrate` runs `aos migrate`.
ENTRYPOINT ["aos"]
CMD ["serve"]
