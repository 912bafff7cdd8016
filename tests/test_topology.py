"""Topology: the seed's dict, the general form, files, units, presets and the errors they raise."""

from __future__ import annotations

import json

import pytest

from rotafx.topology import Device, Link, Topology, TopologyError, parse_quantity, preset

# the seed's Partition Optimizer topology, written out here (not taken from rotafx)
SEED = {
    "ground_nodes": 2,
    "orbital_nodes": 4,
    "ground_flops": 100e12,  # 100 TFLOPS per ground node
    "orbital_flops": 20e12,  # 20 TFLOPS per orbital node
    "uplink_bandwidth": 100e6,  # 100 Mbps ground -> orbit
    "downlink_bandwidth": 500e6,  # 500 Mbps orbit -> ground
    "isl_bandwidth": 10e9,  # 10 Gbps inter-satellite
    "ground_orbit_latency_ms": 25,  # LEO latency
}

ORBITALS = [f"orbital{i}" for i in range(4)]


def seed(**changes):
    d = dict(SEED)
    for k, v in changes.items():
        if v is None:
            d.pop(k, None)
        else:
            d[k] = v
    return d


def raises_naming(data, *fragments):
    """Build ``data`` and check the TopologyError names every fragment (the key and the value)."""
    with pytest.raises(TopologyError) as info:
        Topology.from_dict(data)
    msg = str(info.value)
    for f in fragments:
        assert f in msg, f"{f!r} not in error message {msg!r}"
    return msg


# ---------------------------------------------------------------------------
# the seed's dict


def test_seed_chain_and_links():
    t = Topology.from_dict(SEED)
    assert t.chain == ("ground0", *ORBITALS, "ground1")
    assert t.num_stages == 6
    assert [t.devices[n].kind for n in t.chain] == ["ground"] + ["orbital"] * 4 + ["ground"]
    assert t.devices["ground0"].flops == 100e12
    assert t.devices["orbital2"].flops == 20e12

    up = t.link("ground0", "orbital0")
    assert (up.kind, up.bandwidth_bps, up.latency_ms) == ("uplink", 100e6, 25.0)
    down = t.link("orbital3", "ground1")
    assert (down.kind, down.bandwidth_bps, down.latency_ms) == ("downlink", 500e6, 25.0)
    for a, b in zip(ORBITALS, ORBITALS[1:]):
        isl = t.link(a, b)
        assert (isl.kind, isl.bandwidth_bps) == ("isl", 10e9)

    # every consecutive pair of the chain is joined by a link of the expected kind
    kinds = [t.link(a, b).kind for a, b in zip(t.chain, t.chain[1:])]
    assert kinds == ["uplink", "isl", "isl", "isl", "downlink"]

    # a bypass skips the whole orbital run: ground0 -> ground1 over the ground link
    assert t.bypasses == ((1, 4),)
    first, last = t.bypasses[0]
    bypass = t.link(t.chain[first - 1], t.chain[last + 1])
    assert (bypass.src, bypass.dst, bypass.kind) == ("ground0", "ground1", "ground")


def test_stages_of_kind_and_stage_device():
    t = Topology.from_dict(SEED)
    assert t.stages_of_kind("ground") == [0, 5]
    assert t.stages_of_kind("orbital") == [1, 2, 3, 4]
    assert t.stage_device(3).name == "orbital2"


def test_one_ground_node_is_at_both_ends():
    t = Topology.from_dict(seed(ground_nodes=1))
    assert t.chain == ("ground0", *ORBITALS, "ground0")
    assert sorted(t.devices) == sorted(["ground0", *ORBITALS])
    assert t.link("orbital3", "ground0").kind == "downlink"
    # skipping the orbit leaves the request where it is
    assert t.link("ground0", "ground0").kind == "local"


def test_no_orbital_nodes_is_a_ground_chain():
    t = Topology.from_dict(seed(orbital_nodes=0))
    assert t.chain == ("ground0", "ground1")
    assert t.bypasses == ()
    assert t.link("ground0", "ground1").kind == "ground"


def test_optional_keys_reach_devices_and_links():
    t = Topology.from_dict(seed(ground_memory=64e9, orbital_memory=16e9, ground_power_w=450, orbital_power_w=120,
                                uplink_energy_per_bit=3e-9, isl_latency_ms=2, ground_bandwidth=40e9,
                                ground_latency_ms=4))
    assert t.devices["ground1"].memory_bytes == 64e9
    assert t.devices["orbital1"].memory_bytes == 16e9
    assert t.devices["ground0"].power_w == 450
    assert t.devices["orbital3"].power_w == 120
    assert t.link("ground1", "orbital2").energy_per_bit_j == 3e-9
    assert t.link("orbital0", "orbital1").latency_ms == 2
    g = t.link("ground0", "ground1")
    assert (g.bandwidth_bps, g.latency_ms) == (40e9, 4)


def test_unit_strings_in_the_seed_dict():
    t = Topology.from_dict(seed(uplink_bandwidth="100 Mbps", downlink_bandwidth="0.5 Gbps", isl_bandwidth="10 Gbps",
                                ground_orbit_latency_ms="25 ms", ground_memory="80 GB",
                                ground_memory_bandwidth="3.35 TB/s", ground_flops="100 TFLOPS",
                                orbital_memory="16 GiB"))
    assert t.link("ground0", "orbital0").bandwidth_bps == pytest.approx(100 * 10**6)
    assert t.link("orbital3", "ground1").bandwidth_bps == pytest.approx(0.5 * 10**9)
    assert t.link("orbital0", "orbital1").bandwidth_bps == pytest.approx(10 * 10**9)
    assert t.link("ground0", "orbital0").latency_ms == pytest.approx(25)
    g = t.devices["ground0"]
    assert g.memory_bytes == pytest.approx(80 * 10**9)
    assert g.memory_bandwidth == pytest.approx(3.35 * 10**12)
    assert g.flops == pytest.approx(100 * 10**12)
    assert t.devices["orbital0"].memory_bytes == 16 * 2**30
    # strings and numbers give the same topology
    assert Topology.from_dict(seed(uplink_bandwidth="100 Mbps")) == Topology.from_dict(SEED)


@pytest.mark.parametrize(
    "value, kind, expected",
    [
        ("100 Mbps", "bps", 100 * 10**6),
        ("10Gbps", "bps", 10 * 10**9),
        ("1 GB/s", "bps", 8 * 10**9),  # bytes per second in a bits-per-second field
        ("25 ms", "ms", 25),
        ("0.5 s", "ms", 500),
        ("250 us", "ms", 0.25),
        ("80 GB", "bytes", 80 * 10**9),
        ("50 MB", "bytes", 50 * 10**6),
        ("2 GiB", "bytes", 2 * 2**30),
        ("3.35 TB/s", "Bps", 3.35 * 10**12),
        ("989 TFLOPS", "flops", 989 * 10**12),
        ("1e9", "bps", 10**9),
        (42, "ms", 42),
        (1.5e6, "bps", 1.5e6),
    ],
)
def test_parse_quantity(value, kind, expected):
    assert parse_quantity(value, kind, "k") == pytest.approx(expected)


@pytest.mark.parametrize("value", ["100 furlongs", "fast", True, [1, 2]])
def test_parse_quantity_rejects(value):
    with pytest.raises(TopologyError) as info:
        parse_quantity(value, "bps", "uplink_bandwidth")
    assert "uplink_bandwidth" in str(info.value)


# -- errors name the key and the value ---------------------------------------


@pytest.mark.parametrize("key", ["uplink_bandwidth", "ground_nodes", "orbital_flops", "isl_bandwidth"])
def test_missing_key(key):
    raises_naming(seed(**{key: None}), key, "missing")


def test_negative_bandwidth():
    raises_naming(seed(uplink_bandwidth=-100e6), "uplink_bandwidth", str(-100e6))
    raises_naming(seed(downlink_bandwidth="-5 Mbps"), "downlink_bandwidth", "-5 Mbps")


@pytest.mark.parametrize("key", ["uplink_bandwidth", "downlink_bandwidth", "isl_bandwidth", "ground_flops"])
def test_zero_is_rejected(key):
    raises_naming(seed(**{key: 0}), key, "0")


def test_negative_latency():
    raises_naming(seed(ground_orbit_latency_ms=-3), "ground_orbit_latency_ms", "-3")


def test_unknown_unit():
    raises_naming(seed(uplink_bandwidth="100 furlongs"), "uplink_bandwidth", "furlongs", "100 furlongs")


def test_unknown_key():
    raises_naming(seed(uplink_bandwith=100e6), "uplink_bandwith")


def test_ground_nodes_zero():
    raises_naming(seed(ground_nodes=0), "ground_nodes", "0")


@pytest.mark.parametrize("value", [-1, 2.5, "4", True])
def test_node_count_must_be_whole(value):
    raises_naming(seed(orbital_nodes=value), "orbital_nodes", repr(value))


@pytest.mark.parametrize("name", ["orbital0", "ground7"])
def test_output_node_must_be_a_ground_node(name):
    raises_naming(seed(output_node=name), "output_node", name)


def test_input_node_must_be_a_ground_node():
    raises_naming(seed(input_node="orbital1"), "input_node", "orbital1")


def test_output_node_chosen():
    t = Topology.from_dict(seed(ground_nodes=3, output_node="ground1"))
    assert t.chain == ("ground0", *ORBITALS, "ground1")


def test_zero_memory_bandwidth_names_the_seed_key():
    raises_naming(seed(ground_memory_bandwidth=0), "ground_memory_bandwidth")


# ---------------------------------------------------------------------------
# the general form

GENERAL = {
    "devices": [
        {"name": "edge", "kind": "ground", "flops": "50 TFLOPS", "memory": "24 GB", "memory_bandwidth": "1 TB/s",
         "power": "300 W"},
        {"name": "sat", "count": 2, "kind": "orbital", "flops": 20e12, "memory": "16 GB", "cache": "40 MB"},
        {"name": "dc", "flops": "400 TFLOPS", "memory": "80 GB"},
    ],
    "links": [
        {"src": "edge", "dst": "sat0", "bandwidth": "200 Mbps", "latency_ms": 20, "energy_per_bit": 1e-8,
         "kind": "uplink"},
        {"src": "sat0", "dst": "sat1", "bandwidth": "10 Gbps", "latency": "1 ms", "kind": "isl"},
        {"src": "sat1", "dst": "dc", "bandwidth": "1 Gbps", "latency_ms": 20, "kind": "downlink",
         "bidirectional": False},
        {"src": "edge", "dst": "dc", "bandwidth": "10 Gbps", "latency_ms": 5, "kind": "ground"},
    ],
    "chain": ["edge", "sat0", "sat1", "dc"],
    "bypasses": [[1, 2]],
}


def check_general(t: Topology) -> None:
    assert t.chain == ("edge", "sat0", "sat1", "dc")
    assert set(t.devices) == {"edge", "sat0", "sat1", "dc"}
    e = t.devices["edge"]
    assert e.kind == "ground"
    assert e.flops == pytest.approx(50 * 10**12)
    assert e.memory_bytes == pytest.approx(24 * 10**9)
    assert e.memory_bandwidth == pytest.approx(10**12)
    assert e.power_w == 300
    for s in ("sat0", "sat1"):
        d = t.devices[s]
        assert d.kind == "orbital"
        assert d.flops == 20e12
        assert d.cache_bytes == pytest.approx(40 * 10**6)
    up = t.link("edge", "sat0")
    assert (up.kind, up.bandwidth_bps, up.latency_ms, up.energy_per_bit_j) == ("uplink", pytest.approx(200e6), 20, 1e-8)
    # links are bidirectional unless told otherwise
    assert t.link("sat0", "edge").bandwidth_bps == pytest.approx(200e6)
    assert t.link("sat1", "sat0").latency_ms == pytest.approx(1)
    with pytest.raises(TopologyError):
        t.link("dc", "sat1")
    assert t.bypasses == ((1, 2),)
    assert t.link("edge", "dc").kind == "ground"


def test_general_form_from_dict():
    check_general(Topology.from_dict(GENERAL))


def test_general_form_devices_as_mapping_and_default_chain():
    t = Topology.from_dict({
        "devices": {"a": {"flops": 1e12, "memory": "1 GB"}, "b": {"flops": 2e12, "memory": "2 GB"}},
        "links": [{"src": "a", "dst": "b", "bandwidth": "1 Gbps"}],
    })
    assert t.chain == ("a", "b")
    assert t.devices["b"].memory_bytes == pytest.approx(2e9)
    assert t.capacity == "memory"


def test_general_form_from_json(tmp_path):
    p = tmp_path / "topo.json"
    p.write_text(json.dumps(GENERAL))
    check_general(Topology.load(p))
    check_general(Topology.coerce(str(p)))


def test_general_form_from_yaml(tmp_path):
    yaml = pytest.importorskip("yaml")
    p = tmp_path / "topo.yaml"
    p.write_text(yaml.safe_dump(GENERAL))
    check_general(Topology.load(p))


def test_general_form_from_handwritten_yaml(tmp_path):
    p = tmp_path / "topo.yml"
    p.write_text(
        "devices:\n"
        "  - {name: g, flops: 100 TFLOPS, memory: 80 GB}\n"
        "  - {name: o, kind: orbital, flops: 20 TFLOPS, memory: 32 GB}\n"
        "links:\n"
        "  - {src: g, dst: o, bandwidth: 100 Mbps, latency_ms: 25, kind: uplink}\n"
        "chain: [g, o]\n"
    )
    t = Topology.load(p)
    assert t.chain == ("g", "o")
    assert t.link("g", "o").bandwidth_bps == pytest.approx(100e6)
    assert t.devices["o"].flops == pytest.approx(20e12)


def test_general_form_from_toml(tmp_path):
    p = tmp_path / "topo.toml"
    p.write_text(
        'chain = ["edge", "sat0", "sat1", "dc"]\n'
        "bypasses = [[1, 2]]\n"
        "[[devices]]\n"
        'name = "edge"\nkind = "ground"\nflops = "50 TFLOPS"\nmemory = "24 GB"\nmemory_bandwidth = "1 TB/s"\n'
        'power = "300 W"\n'
        "[[devices]]\n"
        'name = "sat"\ncount = 2\nkind = "orbital"\nflops = 20e12\nmemory = "16 GB"\ncache = "40 MB"\n'
        "[[devices]]\n"
        'name = "dc"\nflops = "400 TFLOPS"\nmemory = "80 GB"\n'
        "[[links]]\n"
        'src = "edge"\ndst = "sat0"\nbandwidth = "200 Mbps"\nlatency_ms = 20\nenergy_per_bit = 1e-8\nkind = "uplink"\n'
        "[[links]]\n"
        'src = "sat0"\ndst = "sat1"\nbandwidth = "10 Gbps"\nlatency = "1 ms"\nkind = "isl"\n'
        "[[links]]\n"
        'src = "sat1"\ndst = "dc"\nbandwidth = "1 Gbps"\nlatency_ms = 20\nkind = "downlink"\nbidirectional = false\n'
        "[[links]]\n"
        'src = "edge"\ndst = "dc"\nbandwidth = "10 Gbps"\nlatency_ms = 5\nkind = "ground"\n'
    )
    check_general(Topology.load(p))


def test_seed_dict_from_json_file(tmp_path):
    p = tmp_path / "seed.json"
    p.write_text(json.dumps(SEED))
    assert Topology.load(p) == Topology.from_dict(SEED)


def test_file_errors(tmp_path):
    with pytest.raises(TopologyError, match="does not exist"):
        Topology.load(tmp_path / "nope.json")
    bad = tmp_path / "topo.ini"
    bad.write_text("x")
    with pytest.raises(TopologyError, match=r"\.ini"):
        Topology.load(bad)


def test_link_naming_an_unknown_device():
    data = json.loads(json.dumps(GENERAL))
    data["links"][1]["dst"] = "mars"
    raises_naming(data, "mars", "links[1]")


def test_chain_naming_an_unknown_device():
    data = json.loads(json.dumps(GENERAL))
    data["chain"] = ["edge", "sat0", "pluto", "dc"]
    raises_naming(data, "pluto")


def test_chain_without_a_link():
    data = json.loads(json.dumps(GENERAL))
    data["links"] = [l for l in data["links"] if l["src"] != "sat0"]
    raises_naming(data, "sat0", "sat1")


def test_general_device_errors():
    raises_naming({"devices": [{"name": "a", "flops": 1e12}]}, "'a'", "memory")
    raises_naming({"devices": [{"name": "a", "flops": 1e12, "memory": "1 GB", "colour": "red"}]}, "'a'", "colour")
    raises_naming({"devices": [{"name": "a", "flops": 1e12, "memory": "1 GB", "count": 0}]}, "'a'", "count", "0")
    raises_naming({"devices": [{"name": "a", "flops": -1, "memory": "1 GB"}]}, "'a'", "flops", "-1")
    raises_naming({"devices": [{"name": "a", "flops": 1e12, "memory": "1 parsec"}]}, "memory", "parsec")


def test_general_form_shape_errors():
    """Values of the wrong shape name the key and the value, never a bare int() or unpacking error."""
    dev = {"name": "a", "flops": 1e12, "memory": "1 GB"}
    raises_naming({"devices": [{**dev, "count": "abc"}]}, "'a'", "count", "'abc'", "whole number")
    raises_naming({"devices": [{**dev, "count": 1.5}]}, "count", "1.5")
    raises_naming({"devices": [{**dev, "count": True}]}, "count", "True")
    raises_naming({"devices": "gpu"}, "devices", "'gpu'", "list")
    raises_naming({"devices": ["gpu"]}, "devices[0]", "'gpu'", "mapping")
    raises_naming({"devices": {"a": 3}}, "devices", "3")
    raises_naming({"devices": [dev], "links": "x"}, "links", "'x'")
    raises_naming({"devices": [dev], "links": ["ab"]}, "links[0]", "'ab'")
    raises_naming({"devices": [dev], "chain": "a"}, "chain", "'a'", "list of device names")
    raises_naming({"devices": [{**dev, "count": 3}], "bypasses": [[1]]}, "bypasses[0]", "[1]", "[first, last]")
    raises_naming({"devices": [{**dev, "count": 3}], "bypasses": [["a", "b"]]}, "bypasses[0]", "['a', 'b']")
    raises_naming({"devices": [dev], "bypasses": "x"}, "bypasses", "'x'")
    with pytest.raises(TopologyError, match="a topology is a mapping"):
        Topology.from_dict([1, 2])  # type: ignore[arg-type]


@pytest.mark.parametrize("suffix,text", [(".json", "{not json"), (".yaml", "a: [1, 2"), (".toml", "a = = 1")])
def test_malformed_files_name_the_file_and_the_format(tmp_path, suffix, text):
    f = tmp_path / f"topo{suffix}"
    f.write_text(text)
    with pytest.raises(TopologyError, match=rf"topo\{suffix}' is not valid {suffix[1:].upper()}"):
        Topology.load(f)


def test_general_link_errors():
    devs = [{"name": "a", "flops": 1e12, "memory": "1 GB"}, {"name": "b", "flops": 1e12, "memory": "1 GB"}]
    raises_naming({"devices": devs, "links": [{"src": "a", "dst": "b"}]}, "links[0]", "bandwidth")
    raises_naming({"devices": devs, "links": [{"src": "a", "dst": "b", "bandwidth": 0}]}, "'a'", "'b'", "bandwidth", "0")
    raises_naming({"devices": devs, "links": [{"src": "a", "dst": "b", "bandwidth": 1e9, "speed": 3}]}, "speed")


def test_general_form_unknown_top_level_key():
    data = json.loads(json.dumps(GENERAL))
    data["chian"] = data.pop("chain")
    raises_naming(data, "chian")


def test_capacity_rule():
    t = Topology.from_dict(seed(capacity="cache", orbital_cache=64e6))
    assert t.capacity == "cache"
    assert t.capacity_bytes(t.devices["orbital0"]) == 64e6
    m = t.with_capacity("memory")
    assert m.capacity_bytes(m.devices["orbital0"]) == 32e9  # the seed default orbital memory
    raises_naming(seed(capacity="disk"), "capacity", "disk")


# ---------------------------------------------------------------------------
# presets


def test_preset_seed():
    t = preset("seed")
    assert t == Topology.from_dict(SEED)
    assert Topology.coerce("seed") == t


def test_preset_seed_llama70b():
    t = preset("seed-llama70b")
    assert t.chain == ("ground0", *[f"orbital{i}" for i in range(5)], "ground2")
    assert t.devices["ground1"].flops == 200e12
    assert t.devices["orbital4"].flops == 50e12
    up = t.link("ground0", "orbital0")
    assert up.bandwidth_bps == 200e6
    assert t.link("orbital4", "ground2").bandwidth_bps == 1e9
    assert t.link("orbital0", "orbital1").bandwidth_bps == 25e9
    assert up.latency_ms == 25  # the default LEO latency: the example gives none


def test_preset_h100x16_l2():
    t = preset("h100x16-l2")
    assert len(t.devices) == 16
    assert len(t.chain) == 16
    assert len(set(t.chain)) == 16
    assert t.capacity == "cache"
    for name in t.chain:
        d = t.devices[name]
        assert isinstance(d, Device)
        assert d.cache_bytes == pytest.approx(50 * 10**6)
        assert t.capacity_bytes(d) == pytest.approx(50 * 10**6)
        assert d.memory_bytes == pytest.approx(80 * 10**9)
        assert d.memory_bandwidth == pytest.approx(3.35 * 10**12)
    for a, b in zip(t.chain, t.chain[1:]):
        assert t.link(a, b).bandwidth_bps == pytest.approx(3.6 * 10**12)


def test_unknown_preset():
    with pytest.raises(TopologyError) as info:
        preset("mars-base")
    assert "mars-base" in str(info.value) and "seed" in str(info.value)


def test_describe_mentions_every_stage():
    text = Topology.from_dict(SEED).describe()
    for name in ("ground0", *ORBITALS, "ground1"):
        assert name in text
    assert "100 Mbps" in text and "500 Mbps" in text and "10 Gbps" in text


# ---------------------------------------------------------------------------
# a topology is as large as what its user wrote: links made when looked up


def _links_alive() -> int:
    """Link objects alive in this process (a count, not a time)."""
    import gc

    gc.collect()
    return sum(type(o) is Link for o in gc.get_objects())


def test_ten_thousand_orbital_nodes_construct_and_their_links_are_looked_up():
    t = Topology.from_dict(seed(orbital_nodes=10_000))
    assert t.num_stages == 10_002 and t.chain[0] == "ground0" and t.chain[-1] == "ground1"
    assert len(t.devices) == 10_002
    up, isl, down = t.link("ground1", "orbital9999"), t.link("orbital17", "orbital9998"), t.link("orbital5000", "ground0")
    assert (up.src, up.dst, up.kind, up.bandwidth_bps, up.latency_ms) == ("ground1", "orbital9999", "uplink", 100e6, 25)
    assert (isl.kind, isl.bandwidth_bps, isl.latency_ms) == ("isl", 10e9, 0.0)
    assert (down.kind, down.bandwidth_bps) == ("downlink", 500e6)
    assert t.link("ground0", "ground1").kind == "ground" and t.link("orbital3", "orbital3").kind == "local"
    with pytest.raises(TopologyError, match="no link from 'orbital3' to 'mars'"):
        t.link("orbital3", "mars")
    # every ordered pair of distinct nodes is joined, as before: 2·2·n up and down, 2 ground, n(n-1) isl
    n = 10_000
    assert len(t.links) == 4 * n + 2 + n * (n - 1)
    assert ("orbital1", "orbital2") in t.links and ("orbital1", "orbital1") not in t.links


def test_stored_links_grow_linearly_with_the_nodes():
    """n satellites joined pairwise are n² links; what is kept must be O(n): count the Link objects alive."""
    before = _links_alive()
    topologies = [Topology.from_dict(seed(orbital_nodes=n, ground_nodes=g)) for n, g in ((300, 2), (300, 50))]
    held = _links_alive() - before
    assert len(topologies[0].links) > 90_000  # what the old table stored, one object each
    assert held <= 4 * 2 * 350, held  # at most a few per node (none: groups make them when looked up)


def test_seed_links_are_every_pair_by_kind():
    """The lazily made links are exactly the table the seed's dict meant: every ordered pair by the kinds of its ends."""
    t = Topology.from_dict(seed(ground_nodes=3, orbital_nodes=3, isl_latency_ms=2, ground_latency_ms=4))
    kind = {("ground", "orbital"): "uplink", ("orbital", "ground"): "downlink", ("ground", "ground"): "ground",
            ("orbital", "orbital"): "isl"}
    names = list(t.devices)
    expected = {(a, b): kind[t.devices[a].kind, t.devices[b].kind] for a in names for b in names if a != b}
    assert {key: link.kind for key, link in t.links.items()} == expected
    assert len(t.links) == len(expected) == 30
    for (a, b), link in t.links.items():
        assert (link.src, link.dst) == (a, b)
        assert link.latency_ms == {"uplink": 25, "downlink": 25, "ground": 4, "isl": 2}[link.kind]


def test_to_dict_of_a_large_seed_topology_is_small_and_reads_back_equal():
    t = Topology.from_dict(seed(orbital_nodes=10_000))
    d = t.to_dict()
    assert len(d["links"]) == 4 and sorted(l["kind"] for l in d["links"]) == ["downlink", "ground", "isl", "uplink"]
    assert Topology.from_dict(d) == t
    assert Topology.from_dict(json.loads(json.dumps(d))) == t


def test_general_form_links_between_lists_of_devices():
    data = {"devices": [{"name": "g", "count": 2, "flops": 1e12, "memory": 1e9},
                        {"name": "s", "count": 3, "kind": "orbital", "flops": 1e12, "memory": 1e9}],
            "links": [{"src": "g0", "dst": "s1", "bandwidth": "5 Mbps", "kind": "special", "bidirectional": False},
                      {"src": ["g0", "g1"], "dst": ["s0", "s1", "s2"], "bandwidth": "100 Mbps", "latency_ms": 25,
                       "kind": "uplink", "bidirectional": False},
                      {"src": ["s0", "s1", "s2"], "dst": ["s0", "s1", "s2"], "bandwidth": "10 Gbps", "kind": "isl"},
                      {"src": ["s0", "s1", "s2"], "dst": ["g0", "g1"], "bandwidth": "1 Gbps", "kind": "downlink"},
                      {"src": ["s0"], "dst": "g1", "bandwidth": "1 bps", "kind": "never"},
                      {"src": ["g0"], "dst": ["g1"], "bandwidth": "40 Gbps", "kind": "ground"}],
            "chain": ["g0", "s0", "s1", "s2", "g1"], "bypasses": [[1, 3]]}
    t = Topology.from_dict(data)
    assert t.link("g1", "s2").kind == "uplink" and t.link("g1", "s2").bandwidth_bps == 100e6
    assert t.link("g0", "s1").kind == "special"  # a link written out wins over a group
    assert t.link("s2", "s0").kind == "isl" and t.link("s1", "g0").kind == "downlink"
    assert t.link("s0", "g1").kind == "downlink"  # the first group wins over a later one
    assert t.link("g0", "s0").kind == "uplink"  # the downlink group's reverse (g -> s) comes after the uplink group
    assert t.link("g1", "g0").kind == "ground"  # a group is bidirectional unless told otherwise
    with pytest.raises(TopologyError):
        t.link("g1", "g1" + "x")
    # the written link, the uplinks but the one it shadows, isl 3·2, downlinks 3·2, ground both ways; the other
    # groups' pairs are all shadowed
    assert len(t.links) == len(list(t.links)) == len(dict(t.links.items())) == 1 + 5 + 6 + 6 + 2
    assert Topology.from_dict(t.to_dict()) == t


def test_a_written_link_shadows_one_pair_of_a_group():
    data = {"devices": [{"name": "g", "count": 2, "flops": 1e12, "memory": 1e9},
                        {"name": "s", "count": 3, "flops": 1e12, "memory": 1e9}],
            "links": [{"src": ["g0", "g1"], "dst": ["s0", "s1", "s2"], "bandwidth": 1e8, "bidirectional": False},
                      {"src": "g0", "dst": "s1", "bandwidth": 5e6, "kind": "special", "bidirectional": False}],
            "chain": ["g0", "s1"]}
    t = Topology.from_dict(data)
    assert t.link("g0", "s1").kind == "special" and t.link("g0", "s2").kind == "link"
    assert len(t.links) == len(dict(t.links.items())) == 6


def test_repr_holds_every_figure_and_stays_linear():
    """A plan cache keys on the topology's repr: two topologies that differ in one latency must not look alike."""
    data = {"devices": [{"name": "a", "flops": 1e12, "memory": 1e9}, {"name": "b", "flops": 1e12, "memory": 1e9}],
            "links": [{"src": "a", "dst": "b", "bandwidth": 1e9, "latency_ms": 0.01}]}
    slow = {**data, "links": [{**data["links"][0], "latency_ms": 40}]}
    assert repr(Topology.from_dict(data)) != repr(Topology.from_dict(slow))
    assert repr(Topology.from_dict(SEED)) != repr(Topology.from_dict(seed(isl_latency_ms=3)))
    big = Topology.from_dict(seed(orbital_nodes=3000))
    assert len(repr(big.links)) < 100 * 3000  # the names in its groups, not 9 million links
