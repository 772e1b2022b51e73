# One image for every orderflow service; the command picks which one runs:
#   docker run IMAGE worker cart|orders|inventory|notify     (default: worker orders)
#   docker run IMAGE topics | migrate                         (one-shot set-up jobs)
# Build: docker build -t orderflow .

# --- builder: resolve nothing, install exactly the pinned lock into a venv ---------------------------------
FROM python:3.11.11-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/orderflow
ENV PATH=/opt/orderflow/bin:$PATH

WORKDIR /src
# The lock first, alone: the dependency layer is rebuilt only when the lock changes.
COPY requirements.lock ./
RUN pip install --no-deps -r requirements.lock

COPY pyproject.toml ./
COPY contracts ./contracts
COPY orderflow ./orderflow
COPY services ./services
# Not editable: the venv holds the code and its data files (SQL migrations, schemas), /src is left behind.
# pip check fails the build if the lock misses a dependency (--no-deps installs would not notice).
RUN pip install --no-deps . && pip check

# --- runtime: the venv and nothing else, as an unprivileged user --------------------------------------------
FROM python:3.11.11-slim-bookworm AS runtime

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
