"""FleetLoop cloud package: the labeling and training half of the loop (uses fleetloop_core)."""

__version__ = "0.1.0"
