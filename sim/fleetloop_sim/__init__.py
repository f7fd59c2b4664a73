"""The simulated world (docs/demo_world.md): items, sites, cameras, tracks and truth (``sim``, ``sim_render``,
``sim_tasks``), a simulated robot without ROS (``fleetloop robot-sim``), the edge pipeline alone over one
stream (``fleetloop edge-demo``) and the upload-queue fault harness (``faults``).

Used by the demo, the tests, the benchmarks and the model toolchain; never on a robot. Depends on
``fleetloop_core`` only; the robot runtime never imports this package.
"""
