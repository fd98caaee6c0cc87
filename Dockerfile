# syntax=docker/dockerfile:1
#
# Training image: CUDA-enabled PyTorch, the project installed, run.sh as the entry point.
#   docker compose build
#   docker compose run --rm trainer ./run.sh --phase sft ...     (see compose.yaml)
#   docker compose run --rm trainer bash scripts/container/train.sh --phase sft ...   (the seed playbook's form)
#
# Base image: plain Python slim, not nvidia/cuda. The PyPI wheel of torch==2.13.0 for Linux x86_64
# already brings its whole CUDA 13.0 user space as pip packages (cuda-toolkit 13.0.3, cuDNN 9.20,
# NCCL 2.29, Triton), so a CUDA runtime base would add a second, unused copy of the same libraries
# (several GB) that could also disagree with torch's. The host supplies only the kernel driver
# (CUDA 13 needs driver >= 580) through the NVIDIA Container Toolkit. Python 3.11 because it is the
# interpreter the project is developed and tested with. Build for linux/amd64 (compose.yaml sets it):
# that is the platform whose PyPI torch wheel is the CUDA build.
FROM python:3.11-slim-bookworm

# Must equal the torch pin in requirements.txt (tests/test_container.py checks); only used to fail
# the build if pip resolved a different or CPU-only torch.
ARG TORCH_VERSION=2.13.0
# Match the host user so files written into the bind-mounted models/ and data/ stay the user's.
ARG TRAINER_UID=1000
ARG TRAINER_GID=1000

# VENV is read by run.sh: pointing it at the venv built here makes `./run.sh setup` a no-op.
ENV VENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

RUN groupadd --gid "${TRAINER_GID}" trainer \
 && useradd --uid "${TRAINER_UID}" --gid "${TRAINER_GID}" --create-home --shell /bin/bash trainer \
 && mkdir -p /opt/venv /app/models \
 && chown -R trainer:trainer /opt/venv /app

# Numeric, so a runtime that enforces non-root (e.g. Kubernetes runAsNonRoot) can verify it.
USER ${TRAINER_UID}:${TRAINER_GID}
WORKDIR /app

# Dependencies in their own layer, keyed on the requirement files only, so a code change does not
# download torch and its CUDA libraries again. setuptools is the build backend of the editable install
# below (run.sh installs with --no-build-isolation).
COPY --chown=trainer:trainer requirements.txt requirements-dev.txt ./
RUN python -m venv "${VENV}" \
 && "${VENV}/bin/python" -m pip install --upgrade pip \
 && "${VENV}/bin/python" -m pip install -r requirements.txt -r requirements-dev.txt "setuptools>=61" \
 && "${VENV}/bin/python" -c "import torch; assert torch.__version__.split('+')[0] == '${TORCH_VERSION}' \
and torch.version.cuda, f'not the CUDA build of torch ${TORCH_VERSION}: {torch.__version__}'"

COPY --chown=trainer:trainer . .
# run.sh's own setup does the editable install and writes $VENV/.setup-stamp (a hash of the requirement
# files and pyproject.toml) exactly as it would on a workstation, so at run time the stamp is current and
# no pip call (nor network) is needed.
RUN ./run.sh setup \
 && test -s "${VENV}/.setup-stamp" \
 && python -c "import torch, transformers, peft, train, contract"
# The seed playbook's paths, made here rather than as a top-level folder of the repository:
# scripts/container/train.sh (hands its arguments to run.sh) and scripts/templates (a link to templates/).
# tests/test_container.py runs this same step on a copy of the build context, then the playbook's commands.
RUN python -m train.tools.image_layout /app

CMD ["./run.sh"]
