"""fleetloop_cloud: ingest, auto-label, review, train, registry, deploy (embedded + AWS backends)."""

from setuptools import find_packages, setup

setup(
    name="fleetloop_cloud",
    version="0.1.0",
    packages=find_packages(include=["fleetloop_cloud", "fleetloop_cloud.*"]),
    package_data={"fleetloop_cloud.review": ["templates/*.html", "static/*.js", "static/*.css"]},
    python_requires=">=3.10",
    description="FleetLoop cloud loop: ingest, auto-label, human review, train/distil, gate, registry, deploy.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": ["fleetloop-cloud = fleetloop_cloud.cli:main"],
        # one line per step: "name = fleetloop_cloud.<module>:register"
        "fleetloop_cloud.commands": [
            "deploy = fleetloop_cloud.deploy:register",
            "jobs = fleetloop_cloud.deploy:register_jobs",
            "ingest = fleetloop_cloud.steps:register_ingest",
            "autolabel = fleetloop_cloud.steps:register_autolabel",
            "review = fleetloop_cloud.steps:register_review",
            "train = fleetloop_cloud.steps:register_train",
            "evaluate = fleetloop_cloud.steps:register_evaluate",
            "register = fleetloop_cloud.steps:register_register",
            "round = fleetloop_cloud.steps:register_round",
            "manifest = fleetloop_cloud.steps:register_manifest",
            "serve = fleetloop_cloud.steps:register_serve",
            "review-page = fleetloop_cloud.review.command:register",
            "campaign = fleetloop_cloud.campaign_command:register",
        ],
        # the closed-loop demo is a `fleetloop` command (it composes robots and cloud)
        "fleetloop.commands": [
            "demo = fleetloop_cloud.demo.command:register",
        ],
    },
)
