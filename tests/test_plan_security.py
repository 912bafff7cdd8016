"""Plans from others are data: a crafted plan directory runs nothing and reads nothing outside itself.

Each attack edits a real exported plan (its stage archive, then plan.json's sha256 to match, as an
attacker who controls the whole directory would) and checks that loading it neither runs the
attacker's code (a marker file stays absent) nor succeeds silently.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import zipfile
from pathlib import Path
from typing import Callable

import pytest
import torch

import rotafx
from rotafx import PlanError

MARKER = "rotafx-pwned"


class _Payload:
    """Unpickling it would create the marker file (the code an attacker wants run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


@pytest.fixture()
def plan(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).eval()
    rotafx.export(model, (torch.randn(2, 4),), path=tmp_path / "plan")
    return tmp_path / "plan"


def _tamper(plan: Path, edit: Callable[[str, bytes], bytes | None], add: dict[str, bytes] | None = None) -> None:
    """Rewrite stage0.pt2 member by member (``edit`` returns the new bytes, None to keep them) and fix its sha256."""
    f = plan / "stage0.pt2"
    zin = zipfile.ZipFile(io.BytesIO(f.read_bytes()))
    out = io.BytesIO()
    top = zin.namelist()[0].split("/", 1)[0]
    with zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            new = edit(info.filename.split("/", 1)[1], data)
            zout.writestr(info, data if new is None else new)
        for name, data in (add or {}).items():
            zout.writestr(f"{top}/{name}", data)
    f.write_bytes(out.getvalue())
    spec = json.loads((plan / "plan.json").read_text())
    spec["stages"][0]["sha256"] = hashlib.sha256(f.read_bytes()).hexdigest()
    (plan / "plan.json").write_text(json.dumps(spec))


def _edit_program(plan: Path, change: Callable[[dict], None]) -> None:
    def edit(member: str, data: bytes) -> bytes | None:
        if member.startswith("models/") and member.endswith(".json"):
            doc = json.loads(data)
            change(doc)
            return json.dumps(doc).encode()
        return None

    _tamper(plan, edit)


def test_pickled_example_inputs_are_never_unpickled(plan: Path, tmp_path: Path) -> None:
    marker = tmp_path / MARKER
    _tamper(plan, lambda m, d: pickle.dumps(_Payload(marker)) if m.startswith("data/sample_inputs/") else None)
    x = torch.randn(2, 4)
    out = rotafx.load(plan)(x)  # the example inputs are dropped unread: the plan still runs
    assert out.shape == (2, 2)
    assert not marker.exists(), "loading the plan ran the attacker's code"


def test_guards_code_is_never_run(plan: Path, tmp_path: Path) -> None:
    marker = tmp_path / MARKER
    _edit_program(plan, lambda doc: doc.__setitem__("guards_code", [f"__import__('pathlib').Path({str(marker)!r}).touch()"]))
    rotafx.load(plan)(torch.randn(2, 4))
    assert not marker.exists(), "the program's guards code ran"


def test_a_weight_marked_for_unpickling_is_refused(plan: Path, tmp_path: Path) -> None:
    marker = tmp_path / MARKER

    def edit(member: str, data: bytes) -> bytes | None:
        if member.endswith("weights_config.json"):
            doc = json.loads(data)
            first = next(iter(doc["config"].values()))
            first["use_pickle"] = True
            return json.dumps(doc).encode()
        if member.startswith("data/weights/weight_"):
            return pickle.dumps(_Payload(marker))
        return None

    _tamper(plan, edit)
    with pytest.raises(PlanError, match=r"stage 0 .* would be unpickled .* plain tensors"):
        rotafx.load(plan)
    assert not marker.exists()


@pytest.mark.parametrize("target", ["torch.load", "torch.hub.load", "builtins.eval", "#custom_extension"])
def test_a_node_that_calls_anything_but_an_operator_is_refused(plan: Path, target: str) -> None:
    def change(doc: dict) -> None:
        doc["graph_module"]["graph"]["nodes"][0]["target"] = target

    _edit_program(plan, change)
    with pytest.raises(PlanError, match=rf"a node calls {target!r}; a plan's programs call operators only"):
        rotafx.load(plan)


def test_a_shape_expression_that_is_code_is_refused(plan: Path) -> None:
    def change(doc: dict) -> None:
        doc["range_constraints"] = {"__import__('os').system('true')": {"min_val": 0, "max_val": 1}}

    _edit_program(plan, change)
    with pytest.raises(PlanError, match=r"shape expression .* not arithmetic on sizes"):
        rotafx.load(plan)


@pytest.mark.parametrize("member", ["data/aotinductor/model.so", "data/weights/model.pt", "data/constants/custom_obj_0",
                                    "extra/script.py"])
def test_a_member_rotafx_does_not_load_is_refused(plan: Path, member: str) -> None:
    _tamper(plan, lambda m, d: None, add={member: b"\x00" * 16})
    with pytest.raises(PlanError, match=rf"holds '{member}', which rotafx does not load from a plan"):
        rotafx.load(plan)


@pytest.mark.parametrize("name", ["../outside.pt2", "/etc/passwd", "sub/stage0.pt2", "..", "."])
def test_stage_files_resolve_inside_the_plan(plan: Path, name: str) -> None:
    (plan.parent / "outside.pt2").write_bytes((plan / "stage0.pt2").read_bytes())
    spec = json.loads((plan / "plan.json").read_text())
    spec["stages"][0]["file"] = name
    (plan / "plan.json").write_text(json.dumps(spec))
    with pytest.raises(PlanError, match=r"names the program .* which is not a file of the plan directory"):
        rotafx.load(plan)


def test_a_link_out_of_the_plan_is_refused(plan: Path) -> None:
    outside = plan.parent / "elsewhere.pt2"
    outside.write_bytes((plan / "stage0.pt2").read_bytes())
    (plan / "stage0.pt2").unlink()
    (plan / "stage0.pt2").symlink_to(outside)
    with pytest.raises(PlanError, match=r"not a file of the plan directory"):
        rotafx.load(plan)


def test_a_file_that_is_not_an_archive_is_named(plan: Path) -> None:
    (plan / "stage0.pt2").write_bytes(b"not a zip at all")
    spec = json.loads((plan / "plan.json").read_text())
    spec["stages"][0]["sha256"] = hashlib.sha256(b"not a zip at all").hexdigest()
    (plan / "plan.json").write_text(json.dumps(spec))
    with pytest.raises(PlanError, match=r"stage 0 .* is not a torch.export program \(not a \.pt2 archive"):
        rotafx.load(plan)


@pytest.mark.parametrize("kw, match", [
    ({"device": "cuda:7"} if not torch.cuda.is_available() or torch.cuda.device_count() < 8 else {"device": "cuda:99"},
     r"device = 'cuda:\d+', but this machine has"),
    ({"device": "tpu"}, "'tpu' is not a torch device type"),
    ({"device": "meta"}, "the meta device holds no data"),
    ({"devices": ["cpu"] * 5}, "devices lists 5 devices but the plan has"),
    ({"devices": "cpu"}, "devices must be a list .* or a dict node -> device, got str"),
    ({"devices": {"nowhere": "cpu"}}, r"devices names node\(s\) \['nowhere'\] that run no stage"),
    ({"device": "cpu", "devices": ["cpu"]}, "give device or devices, not both"),
])
def test_a_device_that_is_not_here_is_named_before_loading(plan: Path, kw: dict, match: str) -> None:
    with pytest.raises(PlanError, match=match):
        rotafx.load(plan, **kw)


def test_a_node_mapped_to_a_missing_gpu_is_named(plan: Path) -> None:
    spec = json.loads((plan / "plan.json").read_text())
    node = spec["stages"][0]["node"]
    missing = f"cuda:{torch.cuda.device_count() + 3}"
    with pytest.raises(PlanError, match=rf"devices\['{node}'\] = '{missing}', but this machine has"):
        rotafx.load(plan, devices={node: missing})
