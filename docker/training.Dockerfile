# FleetLoop training image, following the SageMaker training-container contract:
# SageMaker runs `docker run IMAGE train`, mounts /opt/ml/input/config/hyperparameters.json,
# the channels under /opt/ml/input/data/<channel>/ and collects /opt/ml/model/ after exit.
#
#   docker build -f docker/training.Dockerfile -t <account>.dkr.ecr.<region>.amazonaws.com/fleetloop-train:latest .
#
# The same entry point runs locally (the embedded default) as `fleetloop-cloud train`.
# Not buildable on the CI machines (no Docker engine there).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 && rm -rf /var/lib/apt/lists/*
# CPU torch here; a GPU image uses BASE_IMAGE=pytorch/pytorch:2.x-cuda12.x-cudnn9-runtime and skips this line
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY requirements/robot.txt /tmp/robot.txt
RUN pip install -r /tmp/robot.txt onnx==1.23.2 onnxscript==0.7.2 scipy==1.17.1

WORKDIR /opt/fleetloop
COPY ros2_ws/src/fleetloop_core /opt/fleetloop/fleetloop_core_pkg
COPY cloud /opt/fleetloop/cloud
COPY config /opt/fleetloop/config
RUN pip install --no-deps -e /opt/fleetloop/fleetloop_core_pkg -e /opt/fleetloop/cloud

# `docker run IMAGE train` -> the SageMaker-contract entry point
COPY docker/sagemaker-entrypoint.sh /usr/local/bin/train
RUN chmod +x /usr/local/bin/train
ENTRYPOINT []
