"""Sub-commands of the ``fleetloop`` CLI; each module has ``register(subparsers)``."""
