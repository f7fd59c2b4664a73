"""fleetloop_core.dds: the robot's DDS choice as the environment Fast DDS reads at start-up."""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree

import pytest

from fleetloop_core.config import validate
from fleetloop_core.dds import (
    PROFILES_VARIABLE,
    TRANSPORT_VARIABLE,
    DdsConfig,
    dds_environment,
    environment_transport,
    profile_xml,
)
from fleetloop_core.errors import ConfigError


@pytest.mark.parametrize(
    "transport, variable", [("large_data", "LARGE_DATA"), ("udp", "UDPv4"), ("default", "DEFAULT")]
)
def test_fast_dds_builtin_transports_are_one_variable(transport, variable):
    environ = {}
    values = dds_environment(DdsConfig(transport=transport), environ)
    assert values == {TRANSPORT_VARIABLE: variable} and environ == values
    assert environment_transport(environ) == transport


def _parse(path):
    ns = {"d": "http://www.eprosima.com"}
    return ElementTree.parse(path).getroot(), ns


def test_the_default_shm_transport_is_a_profile_with_large_shared_memory_and_udp(tmp_path):
    environ = {TRANSPORT_VARIABLE: "LARGE_DATA"}
    dds_environment(DdsConfig(), environ, profile_dir=tmp_path)
    assert TRANSPORT_VARIABLE not in environ  # the profile names the transports
    root, ns = _parse(environ[PROFILES_VARIABLE])
    kinds = {
        d.find("d:transport_id", ns).text: d
        for d in root.findall("d:profiles/d:transport_descriptors/d:transport_descriptor", ns)
    }
    assert kinds["fleetloop_shm"].find("d:type", ns).text == "SHM"
    assert int(kinds["fleetloop_shm"].find("d:segment_size", ns).text) >= 8 * 640 * 480 * 3
    assert kinds["fleetloop_udp"].find("d:type", ns).text == "UDPv4"
    rtps = root.find("d:profiles/d:participant/d:rtps", ns)
    assert [t.text for t in rtps.findall("d:userTransports/d:transport_id", ns)] == ["fleetloop_shm", "fleetloop_udp"]
    assert rtps.find("d:useBuiltinTransports", ns).text == "false"
    assert environment_transport({}) == "shm"


def test_a_parents_profile_of_ours_does_not_override_a_builtin_choice():
    environ = {}
    dds_environment(DdsConfig(), environ)  # e.g. the demo's environment, inherited
    dds_environment(DdsConfig(transport="udp"), environ)  # this robot chose udp
    assert environ == {TRANSPORT_VARIABLE: "UDPv4"}


def test_type_propagation_off_writes_a_profile_fast_dds_reads(tmp_path):
    environ = {}
    dds_environment(DdsConfig(transport="udp", type_propagation=False), environ, profile_dir=tmp_path)
    path = environ[PROFILES_VARIABLE]
    root, ns = _parse(path)
    assert environ[TRANSPORT_VARIABLE] == "UDPv4" and root.find("d:profiles/d:transport_descriptors", ns) is None
    participant = root.find("d:profiles/d:participant", ns)
    assert participant.get("is_default_profile") == "true"
    prop = participant.find("d:rtps/d:propertiesPolicy/d:properties/d:property", ns)
    assert prop.find("d:name", ns).text == "fastdds.type_propagation" and prop.find("d:value", ns).text == "disabled"
    # the same choice gives the same file (named by its content), written once
    again = {}
    dds_environment(DdsConfig(transport="udp", type_propagation=False), again, profile_dir=tmp_path)
    assert again[PROFILES_VARIABLE] == path and len(list(tmp_path.iterdir())) == 1


def test_the_yaml_wins_over_the_environment_and_a_users_profile_is_kept_when_it_can_be(tmp_path, caplog):
    environ = {TRANSPORT_VARIABLE: "LARGE_DATA", PROFILES_VARIABLE: "/etc/mine.xml"}
    dds_environment(DdsConfig(transport="udp"), environ, profile_dir=tmp_path)
    assert environ == {TRANSPORT_VARIABLE: "UDPv4", PROFILES_VARIABLE: "/etc/mine.xml"}
    assert "FASTDDS_BUILTIN_TRANSPORTS was LARGE_DATA; the robot's dds.transport udp sets UDPv4" in caplog.text
    dds_environment(DdsConfig(transport="udp", type_propagation=False), environ, profile_dir=tmp_path)
    assert environ[PROFILES_VARIABLE].startswith(str(tmp_path))
    assert "/etc/mine.xml replaced by FleetLoop's profile" in caplog.text


def test_an_unknown_transport_is_refused_by_name():
    with pytest.raises(
        ConfigError,
        match=r"robot.yaml: transport: Input should be 'large_data', 'udp', 'shm' or "
        r"'default' \(got 'tcp'\)",
    ):
        validate(DdsConfig, {"transport": "tcp"}, source="robot.yaml")
    assert "enabled" in profile_xml(DdsConfig())


def test_the_environment_is_set_only_while_a_participant_is_created(monkeypatch):
    from fleetloop_core.dds import dds_environment_during

    monkeypatch.setenv(TRANSPORT_VARIABLE, "LARGE_DATA")
    monkeypatch.delenv(PROFILES_VARIABLE, raising=False)
    import os

    with dds_environment_during(DdsConfig(transport="udp", type_propagation=False)):
        assert os.environ[TRANSPORT_VARIABLE] == "UDPv4" and os.environ[PROFILES_VARIABLE].endswith(".xml")
    assert os.environ[TRANSPORT_VARIABLE] == "LARGE_DATA" and PROFILES_VARIABLE not in os.environ
    with dds_environment_during(None):
        assert os.environ[TRANSPORT_VARIABLE] == "LARGE_DATA"
