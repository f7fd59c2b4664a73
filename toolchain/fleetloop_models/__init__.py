"""The model toolchain (torch): architectures (``zoo``), one fit loop and ONNX export (``training``),
per-task trainers (``trainers``), the reference-model builds (``modelbuild``) and mAP (``detection_metrics``).

Never on a robot. Depends on ``fleetloop_core`` (manifests, signing, preprocessing) and on
``fleetloop_sim`` (the reference builds train on the simulated world's lab frames).
"""
