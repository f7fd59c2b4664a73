"""The human review and tuning web page (``fleetloop-cloud review serve``): the ``review-page`` annotator.

Modules: ``settings`` (config/review_page.yaml), ``leases`` (who holds which task, until when),
``answers`` (labels written in one transaction with annotator and seconds; undo),
``items`` (what the page shows for a task), ``counters`` (queue depth, labels per hour,
audited accuracy), ``tuning`` (risk-coverage, replay sweeps, per-robot uploads), ``plots``
(matplotlib PNGs), ``overrides`` (the local override of config/cloud.yaml the routing view
writes), ``security`` (bind policy, token, sessions, CSRF) and ``app`` (the FastAPI factory).
"""
