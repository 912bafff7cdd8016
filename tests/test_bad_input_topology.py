"""The bad-input catalogue for topologies: the seed's dict, the general form, files and the command line.

Every row is one input a user may get wrong. Each must raise :class:`TopologyError` whose
message names the field and the value (and, for a file, the file), never a raw exception
from json, yaml, tomllib or Python (``KeyError``, ``RecursionError``, ``JSONDecodeError``),
and never a silent wrong figure (an infinite latency that makes every estimate infinite, a
NaN energy, a string taken for a list or a boolean). On the command line each exits 2 with
one ``rotafx:`` line that names the file.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rotafx import LatencyEstimator, LayerPlacement, ModelProfile
from rotafx.cli import main
from rotafx.topology import Device, Link, Topology, TopologyError

SEED = {"ground_nodes": 2, "orbital_nodes": 4, "ground_flops": 100e12, "orbital_flops": 20e12,
        "uplink_bandwidth": 100e6, "downlink_bandwidth": 500e6, "isl_bandwidth": 10e9, "ground_orbit_latency_ms": 25}
DEV = {"name": "a", "flops": 1e12, "memory": "1 GB"}
DEVS = [DEV, {"name": "b", "flops": 1e12, "memory": "1 GB"}]
LINK = {"src": "a", "dst": "b", "bandwidth": "1 Gbps"}
THREE = {"devices": [{**DEV, "count": 3}], "links": [{"src": "a0", "dst": "a1", "bandwidth": 1e9},
                                                     {"src": "a1", "dst": "a2", "bandwidth": 1e9}]}
NOT_NUMBERS = [(math.nan, "nan"), (math.inf, "inf"), (-math.inf, "-inf"), ("fast", "'fast'"), (True, "True"),
               (None, "None"), ([1], "[1]"), ("1e999 ms", "'1e999 ms'")]


def row(data: Any, *patterns: str, id: str) -> Any:
    return pytest.param(data, list(patterns), id=id)


FROM_DICT = [
    # a device's count: a whole number >= 1
    *[row({"devices": [{**DEV, "count": v}]}, "device 'a'", "count", text, id=f"count={text}")
      for v, text in (("two", "'two'"), ([2], "[2]"), (2.7, "2.7"), (True, "True"), (0, "0"), (-1, "-1"),
                      (None, "None"))],
    row({"devices": [{**DEV, "count": "2"}]}, "count", "'2'", "write count: 2", id="count='2'"),
    # the shape of the general form
    row({"devices": 5}, "devices", "5", "list", id="devices=5"),
    row({"devices": None}, "devices", "None", id="devices=None"),
    row({"devices": "gpu"}, "devices", "'gpu'", id="devices='gpu'"),
    row({"devices": {"a": 5}}, "devices", "5", id="devices-mapping-of-numbers"),
    row({"devices": [5]}, "devices[0]", "5", "mapping", id="devices=[5]"),
    row({"devices": [{**DEV, "name": [1]}]}, "devices[0].name", "[1]", id="name=[1]"),
    row({"devices": [{**DEV, "name": ""}]}, "devices[0].name", "''", id="name=''"),
    row({"devices": [{"flops": 1e12, "memory": 1e9}]}, "devices[0]", "name", id="no-name"),
    row({"devices": [{**DEV, "kind": 5}]}, "device 'a'", "kind", "5", id="kind=5"),
    row({"devices": [{**DEV, "colour": "red"}]}, "device 'a'", "colour", id="unknown-device-key"),
    row({"devices": [{**DEV, 7: 1}]}, "device 'a'", "7", id="device-key-7"),
    row({"devices": DEVS, "links": ["a-b"]}, "links[0]", "'a-b'", "mapping", id="links=['a-b']"),
    row({"devices": DEVS, "links": 5}, "links", "5", "list", id="links=5"),
    row({"devices": DEVS, "links": "a-b"}, "links", "'a-b'", id="links='a-b'"),
    row({"devices": DEVS, "links": [{"src": "a", "bandwidth": 1e9}]}, "links[0]", "'dst'", id="link-without-dst"),
    row({"devices": DEVS, "links": [{**LINK, "dst": "mars"}]}, "links[0].dst", "'mars'", id="link-to-mars"),
    row({"devices": DEVS, "links": [{**LINK, "src": []}]}, "links[0].src", "empty", id="src=[]"),
    row({"devices": DEVS, "links": [{**LINK, "src": ["a", "pluto"]}]}, "links[0].src", "'pluto'",
        id="src-list-naming-pluto"),
    row({"devices": DEVS, "links": [{**LINK, "src": {"a": 1}}]}, "links[0].src", "{'a': 1}", id="src-a-mapping"),
    row({"devices": DEVS, "links": [{**LINK, "kind": ["isl"]}]}, "links[0].kind", "['isl']", id="link-kind-list"),
    row({"devices": DEVS, "links": [{**LINK, "speed": 3}]}, "links[0]", "speed", id="unknown-link-key"),
    *[row({"devices": DEVS, "links": [{**LINK, "bidirectional": v}]}, "links[0].bidirectional", text, "true or false",
          id=f"bidirectional={text}") for v, text in (("false", "'false'"), (0, "0"), ("no", "'no'"), (None, "None"))],
    row({"devices": DEVS, "links": [LINK], "chain": "ab"}, "chain", "'ab'", "list of device names", id="chain='ab'"),
    row({"devices": DEVS, "links": [LINK], "chain": [1.5, "b"]}, "chain[0]", "1.5", id="chain=[1.5, b]"),
    row({"devices": DEVS, "links": [LINK], "chain": ["a", "pluto"]}, "chain", "'pluto'", id="chain-naming-pluto"),
    row({"devices": DEVS, "links": [LINK], "chain": []}, "chain", "empty", id="chain=[]"),
    row({"devices": DEVS, "links": [], "chain": ["a", "b"]}, "no link from 'a' to 'b'", id="chain-without-link"),
    row({**THREE, "bypasses": 5}, "bypasses", "5", "list", id="bypasses=5"),
    row({**THREE, "bypasses": "1-1"}, "bypasses", "'1-1'", id="bypasses='1-1'"),
    row({**THREE, "bypasses": [["a1", "a1"]]}, "bypasses[0]", "['a1', 'a1']", "chain indices", "not device names",
        id="bypass-of-device-names"),
    row({**THREE, "bypasses": [[True, 1]]}, "bypasses[0]", "[True, 1]", id="bypass-of-bools"),
    row({**THREE, "bypasses": [[1]]}, "bypasses[0]", "[1]", "[first, last]", id="bypass-of-one"),
    row({**THREE, "bypasses": [[1, 5]]}, "bypass (1, 5)", "chain of 3", id="bypass-past-the-chain"),
    row({**THREE, "bypasses": [[0, 1]]}, "bypass (0, 1)", "inner stages", id="bypass-of-the-first-stage"),
    row({**THREE, "capacity": 5}, "capacity", "5", "'memory' or 'cache'", id="capacity=5"),
    row({**THREE, "capacity": "disk"}, "capacity", "'disk'", id="capacity='disk'"),
    row({**THREE, "chian": []}, "chian", id="unknown-general-key"),
    # every number of a link: finite; bandwidth > 0, latency and energy >= 0
    *[row({"devices": DEVS, "links": [{**LINK, key: v}]}, "links[0]", key, text, id=f"link-{key}={text}")
      for key in ("bandwidth", "latency_ms", "latency", "energy_per_bit") for v, text in NOT_NUMBERS],
    *[row({"devices": DEVS, "links": [{**LINK, key: -1}]}, "links[0]", key, "-1", "positive", id=f"link-{key}=-1")
      for key in ("bandwidth", "latency_ms", "energy_per_bit")],
    row({"devices": DEVS, "links": [{**LINK, "bandwidth": 0}]}, "links[0]", "bandwidth", "0", "positive",
        id="link-bandwidth=0"),
    # every number of a device: finite; speed, memory, bandwidth and power > 0, cache >= 0
    *[row({"devices": [{**DEV, key: v}]}, "device 'a'", key, text, id=f"device-{key}={text}")
      for key in ("flops", "memory", "memory_bandwidth", "power", "cache", "cache_bandwidth")
      for v, text in NOT_NUMBERS],
    *[row({"devices": [{**DEV, key: -5}]}, "device 'a'", key, "-5", id=f"device-{key}=-5")
      for key in ("flops", "memory", "memory_bandwidth", "power", "cache", "cache_bandwidth")],
    *[row({"devices": [{**DEV, key: 0}]}, "device 'a'", key, "0", "positive", id=f"device-{key}=0")
      for key in ("flops", "memory", "memory_bandwidth", "power")],
    # the seed's dict
    *[row({**SEED, key: v}, key, text, id=f"seed-{key}={text}")
      for key in ("ground_orbit_latency_ms", "isl_latency_ms", "uplink_bandwidth", "isl_bandwidth",
                  "uplink_energy_per_bit", "ground_energy_per_bit", "orbital_memory", "ground_flops", "orbital_power_w")
      for v, text in NOT_NUMBERS if v is not None],  # None in the seed's dict: the default (or "missing")
    *[row({**SEED, key: v}, key, text, id=f"seed-{key}={text}")
      for key in ("ground_nodes", "orbital_nodes") for v, text in (("two", "'two'"), ([2], "[2]"), (2.7, "2.7"),
                                                                    (True, "True"), (-1, "-1"))],
    row({**SEED, "ground_nodes": 0}, "ground_nodes", "0", "at least 1", id="seed-ground_nodes=0"),
    row({**SEED, "input_node": ["ground0"]}, "input_node", "['ground0']", id="seed-input_node-list"),
    row({**SEED, "output_node": "orbital1"}, "output_node", "'orbital1'", "ground node", id="seed-output-in-orbit"),
    row({**SEED, "capacity": True}, "capacity", "True", id="seed-capacity=True"),
    row({**SEED, 1: 2, "zzz": 3}, "unknown topology key", "1", "'zzz'", id="seed-keys-of-two-types"),
    row({k: v for k, v in SEED.items() if k != "isl_bandwidth"}, "missing", "isl_bandwidth", "bits per second",
        id="seed-missing-key"),
]


@pytest.mark.parametrize("data, patterns", FROM_DICT)
def test_from_dict_refuses(data: Any, patterns: list[str]) -> None:
    with pytest.raises(TopologyError) as info:
        Topology.from_dict(data)
    msg = str(info.value)
    for p in patterns:
        assert p in msg, f"{p!r} not in the message: {msg}"
    assert "\n" not in msg  # one line on the command line


@pytest.mark.parametrize("link, device", [
    pytest.param(Link("a", "b", 1e9, math.inf), None, id="link-latency-inf"),
    pytest.param(Link("a", "b", 1e9, 0.0, math.nan), None, id="link-energy-nan"),
    pytest.param(Link("a", "b", math.inf), None, id="link-bandwidth-inf"),
    pytest.param(Link("a", "b", 1e9), Device("a", flops=math.inf), id="device-flops-inf"),
    pytest.param(Link("a", "b", 1e9), Device("a", cache_bytes=math.nan), id="device-cache-nan"),
])
def test_topology_built_by_hand_refuses_non_finite_figures(link: Link, device: Device | None) -> None:
    """The dataclasses built directly, not read from a dict, are checked too."""
    devices = {"a": device or Device("a"), "b": Device("b")}
    with pytest.raises(TopologyError, match=r"must be a finite"):
        Topology(devices=devices, chain=("a", "b"), links={("a", "b"): link})


def test_the_silent_wrong_results_of_the_review_are_refused() -> None:
    """Latency inf gave total_ms=inf and a NaN energy per bit energy_j=nan; a valid topology gives finite figures."""
    prof = ModelProfile.from_layers([{"name": f"l{i}", "params": 10**6, "flops": 1e9, "activation_bytes": 10**4}
                                     for i in range(4)], input_bytes=10**4)
    placement = LayerPlacement()
    placement.assign_ground(layers=[0])
    placement.assign_orbital(layers=[1, 2])
    placement.assign_ground(layers=[3])
    est = LatencyEstimator({**SEED, "isl_latency_ms": 0}).estimate(placement, prof)
    assert math.isfinite(est.total_ms) and math.isfinite(est.energy_j) and est.total_ms > 0
    for bad in ({"ground_orbit_latency_ms": math.inf}, {"uplink_energy_per_bit": math.nan}):
        with pytest.raises(TopologyError):
            LatencyEstimator({**SEED, **bad}).estimate(placement, prof)


# ---------------------------------------------------------------------------
# files

DEEP = "[" * 100_000
FILES = [
    pytest.param("empty.json", b"", ["empty"], id="empty-json"),
    pytest.param("blank.yaml", b"  \n\n", ["empty"], id="blank-yaml"),
    pytest.param("empty.toml", b"", ["empty"], id="empty-toml"),
    pytest.param("binary.json", b"\x00\xff\xfe\x01\x02binary", ["UTF-8", "byte 1"], id="binary-json"),
    pytest.param("binary.yaml", b"\x89PNG\r\n\x1a\n", ["UTF-8", "byte 0"], id="binary-yaml"),
    pytest.param("nul.toml", b"\x00\x00\x00", ["binary", "NUL"], id="nul-bytes-toml"),
    pytest.param("bad.json", b'{"ground_nodes": ', ["not valid JSON", "line 1"], id="malformed-json"),
    pytest.param("bad.yaml", b"a: [1, 2", ["not valid YAML", "line 1"], id="malformed-yaml"),
    pytest.param("bad.toml", b"a = = 1", ["not valid TOML", "line 1"], id="malformed-toml"),
    pytest.param("deep.json", DEEP.encode(), ["too deeply", "JSON"], id="deep-json"),
    pytest.param("deep.yaml", DEEP.encode(), ["too deeply", "YAML"], id="deep-yaml"),
    pytest.param("deep.toml", ("a = " + DEEP).encode(), ["too deeply", "TOML"], id="deep-toml"),
    pytest.param("deep-inside.json", ('{"devices": ' + "[" * 900 + "]" * 900 + "}").encode(),
                 ["devices[0]", "mapping"], id="nested-value-json"),
    pytest.param("list.json", b"[1, 2]", ["mapping at the top level", "list"], id="top-level-list"),
    pytest.param("number.yaml", b"42", ["mapping at the top level", "int"], id="top-level-number"),
    pytest.param("python.yaml", b'ground_nodes: !!python/object/apply:os.system ["echo hi"]',
                 ["not valid YAML", "python/object"], id="yaml-python-tag"),
    pytest.param("nan.json", b'{"devices": [{"name": "a", "flops": NaN, "memory": 1e9}]}', ["flops", "nan"],
                 id="json-NaN"),
    pytest.param("inf.yaml", b"devices: [{name: a, flops: 1e12, memory: .inf}]", ["memory", "inf"], id="yaml-.inf"),
    pytest.param("partial.toml", b"ground_nodes = 2", ["missing", "orbital_nodes"], id="toml-seed-missing-key"),
    pytest.param("devices.json", b'{"devices": 5}', ["devices", "5", "list"], id="json-devices=5"),
    pytest.param("topo.ini", b"[x]", ["unknown suffix", "'.ini'"], id="unknown-suffix"),
]


@pytest.mark.parametrize("name, content, patterns", FILES)
def test_load_refuses_naming_the_file(tmp_path: Path, name: str, content: bytes, patterns: list[str]) -> None:
    f = tmp_path / name
    f.write_bytes(content)
    with pytest.raises(TopologyError) as info:
        Topology.load(f)
    msg = str(info.value)
    assert msg.startswith(f"topology file {str(f)!r}"), msg
    for p in patterns:
        assert p in msg, f"{p!r} not in the message: {msg}"
    assert "\n" not in msg and len(msg) < 1000, msg


@pytest.mark.parametrize("name", ["topo.json", "topo.yaml", "plain"])
def test_a_directory_is_not_a_topology_file(tmp_path: Path, name: str) -> None:
    (tmp_path / name).mkdir()
    with pytest.raises(TopologyError) as info:
        Topology.coerce(str(tmp_path / name))
    assert f"topology file {str(tmp_path / name)!r} is a directory" in str(info.value)


def test_an_unreadable_file_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "topo.json"
    f.write_text("{}")

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)  # as root, chmod 000 would not stop the read
    with pytest.raises(TopologyError, match=r"topo\.json' cannot be read: Permission denied"):
        Topology.load(f)


# ---------------------------------------------------------------------------
# the command line: exit 2, one rotafx: line naming the file

@pytest.fixture
def bad_files(tmp_path: Path) -> Path:
    for name, content, _ in (p.values for p in FILES):
        (tmp_path / name).write_bytes(content)
    (tmp_path / "dir.json").mkdir()
    return tmp_path


@pytest.mark.parametrize("argv, name, pattern", [
    pytest.param(["topology"], "deep.json", "too deeply", id="topology-deep-json"),
    pytest.param(["topology"], "binary.yaml", "UTF-8", id="topology-binary-yaml"),
    pytest.param(["topology"], "dir.json", "is a directory", id="topology-directory"),
    pytest.param(["topology"], "bad.toml", "not valid TOML", id="topology-malformed-toml"),
    pytest.param(["estimate", "mlp", "--quiet", "--placement", "ground:0-4", "--topology"], "nan.json", "flops",
                 id="estimate-NaN-flops"),
])
def test_cli_bad_topology_file_exits_2_with_one_line(bad_files: Path, argv: list[str], name: str, pattern: str,
                                                      capsys: pytest.CaptureFixture) -> None:
    rc = main([*argv, str(bad_files / name)])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"rotafx: topology file {str(bad_files / name)!r}"), err
    assert pattern in err and "Traceback" not in err, err


def test_console_script_on_a_deeply_nested_file_prints_one_line(bad_files: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "rotafx.cli", "topology", "deep.yaml"], capture_output=True, text=True,
                         timeout=300, cwd=bad_files)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("rotafx: topology file 'deep.yaml' nests its values too deeply"), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr, out.stderr
