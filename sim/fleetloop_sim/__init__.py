"""The simulated world (docs/demo_world.md) and the fault harness: used by the demo, tests and benchmarks.

Depends on ``fleetloop_core`` (the robot runtime); the robot runtime never imports this package.
"""
