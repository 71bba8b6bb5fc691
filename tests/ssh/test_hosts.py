"""Host strings and the inventory file: pure parsing, no network."""

from __future__ import annotations

from pathlib import Path

import pytest

from distpar.backends.ssh.hosts import HostSpec, default_slots, load_inventory, parse_host, resolve_hosts
from distpar.core.errors import UsageError


@pytest.mark.parametrize(("text", "spec", "label"), [
    ("build1", HostSpec("build1"), "build1"),
    ("gpu_box", HostSpec("gpu_box"), "gpu_box"),
    ("ci@build2:2222", HostSpec("build2", "ci", 2222), "build2:2222"),
    ("10.0.0.7:22", HostSpec("10.0.0.7", None, 22), "10.0.0.7:22"),
    ("[::1]:2200", HostSpec("::1", None, 2200), "[::1]:2200"),
    ("root@fe80::1", HostSpec("fe80::1", "root"), "[fe80::1]"),
])
def test_parse_host(text: str, spec: HostSpec, label: str) -> None:
    assert parse_host(text) == spec
    assert spec.label == label


@pytest.mark.parametrize(("text", "message"), [
    ("", "--hosts: empty host name"),
    ("@h", "--hosts: bad user name in host '@h'"),
    ("h:0", "--hosts: bad port in host 'h:0': '0' is not a port (1-65535)"),
    ("h:ssh", "--hosts: bad port in host 'h:ssh': 'ssh' is not a number"),
    ("h/x", "--hosts: bad host name in 'h/x' (expected [user@]host[:port])"),
])
def test_parse_host_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError) as e:
        parse_host(text)
    assert e.value.message == message


def test_inventory(tmp_path: Path) -> None:
    inv = tmp_path / "hosts.toml"
    inv.write_text(
        '[[host]]\naddress = "build1"\nslots = 4\nuser = "ci"\nport = 2222\nkey = "keys/id"\nworkdir = "/scratch"\n'
        '[[host]]\naddress = "ops@gpu3:22"\n'
    )
    a, b = load_inventory(inv)
    assert a == HostSpec("build1", "ci", 2222, 4, (tmp_path / "keys" / "id").resolve(), "/scratch")
    assert b == HostSpec("gpu3", "ops", 22)


@pytest.mark.parametrize(("text", "message"), [
    ("[[host]]\nslots = 2\n", "host #1: 'address' (a string, [user@]host[:port]) is required"),
    ('[[host]]\naddress = "a"\nslots = 0\n', "host #1: 'slots' must be a whole number of at least 1"),
    ('[[host]]\naddress = "a"\ncolour = "red"\n', "host #1: unknown key(s) colour"),
    ('[[host]]\naddress = "a"\nport = 70000\n', "host #1: 'port': 70000 is not a port (1-65535)"),
    ("[server]\n", "unknown table(s) server (expected [[host]])"),
    ("", "no [[host]] entries"),
    ("[[host]\n", "not valid TOML"),
])
def test_inventory_errors(tmp_path: Path, text: str, message: str) -> None:
    inv = tmp_path / "hosts.toml"
    inv.write_text(text)
    with pytest.raises(UsageError) as e:
        load_inventory(inv)
    assert e.value.message.startswith(f"--hosts-file {inv}: ")
    assert message in e.value.message


def test_resolve_hosts_and_slots(tmp_path: Path) -> None:
    inv = tmp_path / "hosts.toml"
    inv.write_text('[[host]]\naddress = "big"\nslots = 4\n')
    specs = resolve_hosts(["a", "b:2222"], inv)
    assert [s.label for s in specs] == ["a", "b:2222", "big"]
    assert default_slots(specs, 8) == [2, 2, 4]
    assert default_slots(specs, 1) == [1, 1, 4]
    with pytest.raises(UsageError, match="host a is listed twice"):
        resolve_hosts(["a", "a"], None)
    with pytest.raises(UsageError, match="needs --hosts"):
        resolve_hosts([], None)
