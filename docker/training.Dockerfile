# FleetLoop training image, following the SageMaker training-container contract:
# SageMaker runs `docker run IMAGE train` and lays out /opt/ml/input/config/{hyperparameters,
# inputdataconfig,resourceconfig}.json and the channels under /opt/ml/input/data/<channel>/; it
# collects /opt/ml/model/ after exit and reads /opt/ml/output/failure. The entry point reads those
# files itself (fleetloop_cloud/sagemaker_job.py): no sagemaker-training toolkit, no SM_* needed.
#
#   docker build -f docker/training.Dockerfile -t <account>.dkr.ecr.<region>.amazonaws.com/fleetloop-train:latest .
#
# The same entry point runs locally (the embedded default) in a job tree of its own.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
# CPU torch here; a GPU image uses BASE_IMAGE=pytorch/pytorch:2.x-cuda12.x-cudnn9-runtime and skips this line
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY requirements/training.txt /tmp/training.txt
RUN pip install -r /tmp/training.txt

WORKDIR /opt/fleetloop
COPY ros2_ws/src/fleetloop_core /opt/fleetloop/fleetloop_core_pkg
COPY toolchain /opt/fleetloop/toolchain
COPY sim /opt/fleetloop/sim
COPY cloud /opt/fleetloop/cloud
# --no-deps: the packages' own requirement lists are the robot's and the cloud service's.
# The trainers (fleetloop_models) read the simulated world's frame and truth types (fleetloop_sim).
RUN pip install --no-deps /opt/fleetloop/fleetloop_core_pkg /opt/fleetloop/toolchain /opt/fleetloop/sim /opt/fleetloop/cloud

# `docker run IMAGE train` -> the SageMaker-contract entry point
COPY docker/sagemaker-entrypoint.sh /usr/local/bin/train
RUN chmod +x /usr/local/bin/train
ENTRYPOINT []
