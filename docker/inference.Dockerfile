# FleetLoop teacher inference image, following the SageMaker inference-container contract:
# SageMaker runs `docker run IMAGE serve`, unpacks the model package (model.tar.gz: manifest.json,
# model.onnx, ...) into /opt/ml/model and sends GET /ping and POST /invocations to port 8080.
# Batch transform jobs (autolabel.backend: sagemaker-batch) post each frame as application/x-image.
#
#   docker build -f docker/inference.Dockerfile -t <account>.dkr.ecr.<region>.amazonaws.com/fleetloop-serve:latest .
#
# Not buildable on the CI machines (no Docker engine there); the server itself is tested
# (tests/cloud/test_transform.py) and runs locally as `fleetloop-cloud serve --model-dir DIR`.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 && rm -rf /var/lib/apt/lists/*
COPY requirements/robot.txt /tmp/robot.txt
RUN pip install -r /tmp/robot.txt scipy==1.17.1 fastapi==0.165.0 uvicorn==0.54.0

WORKDIR /opt/fleetloop
COPY ros2_ws/src/fleetloop_core /opt/fleetloop/fleetloop_core_pkg
COPY cloud /opt/fleetloop/cloud
COPY config /opt/fleetloop/config
RUN pip install --no-deps -e /opt/fleetloop/fleetloop_core_pkg -e /opt/fleetloop/cloud

# `docker run IMAGE serve` -> the inference server on port 8080
COPY docker/sagemaker-serve.sh /usr/local/bin/serve
RUN chmod +x /usr/local/bin/serve
EXPOSE 8080
ENTRYPOINT []
