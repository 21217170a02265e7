# syntax=docker/dockerfile:1
# The WorldLM image: one image for every participant. `docker-compose.yml` runs it once per
# participant (`worldlm aggregator ...`, `worldlm client ...`); see docs/docker.md.
#
#   docker build -t worldlm .
#   docker run --rm worldlm --help

FROM python:3.11-slim

# HF_HUB_OFFLINE: no participant contacts a model hub; the tokenizer and corpora ship inside
# the package.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    HF_HUB_OFFLINE=1

WORKDIR /app

# Installed as the Makefile does: torch first, pinned by constraints.txt, then the project under
# the same constraints. Torch alone comes from PyTorch's CPU index: on x86_64, PyPI's torch wheel
# is a CUDA build that pulls gigabytes of nvidia-* wheels, and the participants train on CPU.
# (The Makefile keeps PyPI for torch because its machines reach only PyPI; an image build
# downloads from the internet.) `torch==X` in constraints.txt matches the index's `X+cpu`.
# Everything else comes from PyPI. The pip cache mount only speeds up rebuilds.
COPY constraints.txt ./
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -c constraints.txt --index-url https://download.pytorch.org/whl/cpu torch

# The project's dependencies, read from pyproject.toml, in their own layer so that a source
# change does not reinstall them.
COPY pyproject.toml README.md ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -c constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The source, and the project itself (its dependencies are already in place; no dev tools).
# The source stays at /app, so configs are at /app/worldlm/config/shipped/*.toml.
COPY . .
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -c constraints.txt --no-deps . \
    && python -c "import torch, worldlm.cli; print('torch', torch.__version__)"

# Run unprivileged. /checkpoints is created here, owned by that user, so a named volume mounted
# there starts out writable by it.
RUN useradd --create-home --uid 1000 worldlm \
    && mkdir -p /checkpoints \
    && chown worldlm:worldlm /checkpoints
USER worldlm
VOLUME ["/checkpoints"]

ENTRYPOINT ["worldlm"]
CMD ["--help"]
