"""The wire formats the robot and the cloud both speak, written once and used by both sides.

* ``manifest``: the model package manifest (files with sizes and sha256, input spec, outputs,
  task, signature) and its verification;
* ``sidecar``: the JSON that travels beside every uploaded frame (robot, stream, stamps, scores,
  the cascade's outputs, the selector's decision) and the object keys of both;
* ``job_document``: the IoT Jobs job document of a model deploy or rollback, and a job's outcome;
* ``iot_jobs``: the AWS IoT Jobs MQTT topics and execution payloads, device and service side.
"""
