"""The closed-loop demo: a simulated fleet running the real robot stack, the cloud loop, baselines.

``fleetloop demo`` (``make demo``) composes the components of the other packages; it owns only
the orchestration (who runs when), the baselines' data plumbing and the report.
"""
