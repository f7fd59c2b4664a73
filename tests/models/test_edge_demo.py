"""``fleetloop edge-demo``: one simulated field stream through the real cascade, its most label-worthy frames."""

import pytest

from fleetloop_core.cli import main as fleetloop


def test_the_edge_demo_streams_a_site_through_the_cascade(test_models, capsys):
    models = test_models["T4"].parent  # built already: the demo reuses them
    assert fleetloop(["edge-demo", "--models", str(models), "--profile", "test", "--frames", "30", "--site", "2"]) == 0
    out = capsys.readouterr().out
    assert "site-2: 30 frames, edge accuracy" in out and "most label-worthy frames" in out


@pytest.mark.parametrize(("value", "said"), [("-3", "-3 is below 1"), ("0", "0 is below 1"), ("x", "'x' is not")])
def test_a_bad_frame_count_is_refused_before_any_model_is_built(tmp_path, value, said, capsys):
    with pytest.raises(SystemExit) as exit_:
        fleetloop(["edge-demo", "--models", str(tmp_path / "models"), "--frames", value])
    assert exit_.value.code == 2 and f"argument --frames: {said}" in capsys.readouterr().err
    assert not (tmp_path / "models").exists()  # nothing was built or locked
