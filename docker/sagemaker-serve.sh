#!/bin/sh
# SageMaker invokes the inference container with the argument "serve"; serve /opt/ml/model on :8080.
set -e
exec fleetloop-cloud serve --model-dir "${SM_MODEL_DIR:-/opt/ml/model}" --port "${SAGEMAKER_BIND_TO_PORT:-8080}" "$@"
