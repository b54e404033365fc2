# syntax=docker/dockerfile:1
# atpflow image: the `atpflow` command and its dependencies in a virtualenv, run as uid 10001
# with a read-only root filesystem in mind (nothing is written outside mounted volumes).
#
#   docker build -t atpflow .
#   docker run --rm atpflow replay --config /app/config/atpflow.yaml --out /tmp/out FIXTURE...
#
# Both stages must use the same base image: the venv's interpreter is a symlink into it.
# Production builds should pin it by digest.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A C compiler for the compiled parts of the hot path (schemas/_avro.pyx, several times faster
# than fastavro; operators/_sort.pyx, _order.pyx, _project.pyx; sinks/_kafka.pyx); the runtime
# stage gets the built modules only.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
WORKDIR /src
COPY . .
# A regular (non-editable) install: the runtime stage gets the venv only, not the sources.
RUN /opt/venv/bin/pip install .

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="atpflow" \
      org.opencontainers.image.description="WMS/ERP inventory movements to channel availability, and shipment milestones, on Bytewax" \
      org.opencontainers.image.licenses="Apache-2.0"
# tini as PID 1: it reaps the `python -m bytewax.run` children `atpflow run` starts (orphans
# included, should atpflow die first) and forwards signals to atpflow, which passes them on.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
# Numeric ids, matching runAsUser/runAsGroup/fsGroup in k8s/: Kubernetes can only verify
# runAsNonRoot against a numeric USER.
RUN groupadd --system --gid 10001 atpflow \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin atpflow
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
# The sample config and reference files, for `docker run` without mounts; Kubernetes mounts its
# own at /etc/atpflow. The Avro schemas, for reading; the code uses the installed package's copy
# (a `schemas/` package here would shadow the installed one, without its compiled codec).
COPY config/ /app/config/
COPY schemas/avro/ /app/avro/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
# 9999 Timely worker-to-worker, 3030 Bytewax dataflow API (/metrics), 8080 `atpflow serve`.
EXPOSE 9999 3030 8080
ENTRYPOINT ["tini", "--", "atpflow"]
CMD ["--help"]
