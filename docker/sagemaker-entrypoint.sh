#!/bin/sh
# SageMaker invokes the container with the argument "train"; run the SageMaker-contract trainer.
set -e
exec fleetloop-cloud train --sagemaker "$@"
