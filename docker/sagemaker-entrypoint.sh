#!/bin/sh
# SageMaker invokes the container with the argument "train"; run the SageMaker-contract trainer
# (it reads /opt/ml itself; the module, not the fleetloop-cloud CLI, so nothing else is imported).
set -e
exec python -m fleetloop_cloud.train "$@"
