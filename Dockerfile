# One image for every orderflow service; the command picks which one runs:
#   docker run IMAGE worker cart|orders|inventory|notify     (default: worker orders)
#   docker run IMAGE topics | migrate                         (one-shot set-up jobs)
# Build: docker build -t orderflow .          (podman build works the same way)
#
# BASE is any Debian-like image with python3 (3.11) and its venv module. The default is the official image, for
# machines that reach a registry; infra/containers/build.sh passes a local base made with debootstrap instead
# (docs/deploy.md). Only the runtime group is installed: requirements-runtime.lock, every file checked by its hash.
# pip's index settings and CA bundle, where the build machine needs its own, come in as build secrets (pip_conf,
# pip_cert) that exist only during that RUN and are in no layer of either stage.
ARG BASE=python:3.11.11-slim-bookworm

# --- builder: resolve nothing, install exactly the hashed runtime lock into a venv ---------------------------
FROM ${BASE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python3 -m venv /opt/orderflow
ENV PATH=/opt/orderflow/bin:$PATH

WORKDIR /src
# The lock first, alone: the dependency layer is rebuilt only when the lock changes.
COPY requirements-runtime.lock ./
RUN --mount=type=secret,id=pip_conf,required=false --mount=type=secret,id=pip_cert,required=false \
    if [ -s /run/secrets/pip_conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip_conf; fi; \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi; \
    pip install --no-deps --require-hashes -r requirements-runtime.lock

COPY pyproject.toml ./
COPY contracts ./contracts
COPY orderflow ./orderflow
COPY services ./services
# Not editable: the venv holds the code and its data files (SQL migrations, schemas), /src is left behind.
# pip check fails the build if the lock misses a dependency (--no-deps installs would not notice). The build backend
# (setuptools) is fetched into pip's isolated build environment, not into the venv.
RUN --mount=type=secret,id=pip_conf,required=false --mount=type=secret,id=pip_cert,required=false \
    if [ -s /run/secrets/pip_conf ]; then export PIP_CONFIG_FILE=/run/secrets/pip_conf; fi; \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi; \
    pip install --no-deps . && pip check

# --- runtime: the venv and nothing else, as an unprivileged user --------------------------------------------
FROM ${BASE} AS runtime

ENV PATH=/opt/orderflow/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ORDERFLOW_DATA_DIR=/var/lib/orderflow

RUN groupadd --system --gid 10001 orderflow \
    && useradd --system --uid 10001 --gid orderflow --home-dir /var/lib/orderflow --shell /usr/sbin/nologin orderflow \
    && mkdir -p /var/lib/orderflow \
    && chown orderflow:orderflow /var/lib/orderflow

COPY --from=builder /opt/orderflow /opt/orderflow

# A fresh volume mounted here starts owned by the orderflow user: Docker copies the folder's ownership into it.
WORKDIR /var/lib/orderflow
USER orderflow:orderflow

ENTRYPOINT ["orderflow"]
CMD ["worker", "orders"]
