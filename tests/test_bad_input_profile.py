"""The bad-input catalogue for profiles, placements, estimates and the command line.

Every row is one input a user may get wrong. Each must give a clear error of the
project's own type whose message names the thing and the value (or a correct result),
never a raw exception from torch, fx, json or the OS, and never a silent wrong figure.
On the command line, every user error exits 2 with a ``rotafx:`` line and no traceback.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import onnx
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

from rotafx import LatencyEstimator, LayerPlacement, ModelProfile, preset
from rotafx.cli import load_model, main
from rotafx.layers import ProfileError
from rotafx.placement import PlacementError
from tests.models import example_inputs


def raises(call: Callable[[], Any], error: type[BaseException], *patterns: str) -> str:
    """Run ``call``; it must raise ``error`` (exactly that family) with every pattern in its message."""
    with pytest.raises(error) as info:
        call()
    msg = str(info.value)
    for p in patterns:
        assert p in msg, f"{p!r} not in the message: {msg}"
    return msg


# ---------------------------------------------------------------------------
# ModelProfile.from_layers


def two_layers(**first: Any) -> list[dict[str, Any]]:
    return [{"name": "a", "params": 10, "flops": 100, "activation_bytes": 8, **first}, {"name": "b", "params": 1}]


FROM_LAYERS = [
    *[pytest.param(two_layers(**{key: value}), {}, [key, text], id=f"{key}={text}")
      for key in ("params", "flops", "weight_bytes", "activation_bytes", "buffer_bytes", "bytes_moved")
      for value, text in ((math.nan, "nan"), (math.inf, "inf"), (-1, "-1"), ("12", "'12'"), (True, "True"),
                          (None, "None"))],
    *[pytest.param(two_layers(**{key: 1.5}), {}, [key, "whole number", "1.5"], id=f"{key}=1.5")
      for key in ("params", "weight_bytes", "activation_bytes", "buffer_bytes", "bytes_moved")],
    pytest.param(two_layers(), {"input_bytes": -5}, ["input_bytes", "-5"], id="input_bytes=-5"),
    pytest.param(two_layers(), {"input_bytes": math.nan}, ["input_bytes", "nan"], id="input_bytes=nan"),
    pytest.param(two_layers(), {"input_bytes": "5"}, ["input_bytes", "'5'"], id="input_bytes='5'"),
    *[pytest.param(two_layers(), {"itemsize": v}, ["itemsize", repr(v)], id=f"itemsize={v!r}")
      for v in (-2, 0, 1.5, "2", True, math.nan)],
    pytest.param([{"name": "a"}, {"name": "a"}], {}, ["layers 0 and 1", "'a'"], id="duplicate-names"),
    pytest.param([], {}, ["at least one layer"], id="empty"),
    pytest.param([{"name": None}], {}, ["name", "None"], id="name=None"),
    pytest.param([{"name": ""}], {}, ["name", "''"], id="name=''"),
    pytest.param([{"name": 3}], {}, ["name", "3"], id="name=3"),
    pytest.param([5], {}, ["layer 0", "mapping", "5"], id="layer-not-a-mapping"),
    pytest.param({"name": "a"}, {}, ["list of layers", "dict"], id="a-dict-not-a-list"),
    pytest.param([{"name": "a", "parms": 3}], {}, ["unknown key", "parms"], id="unknown-key"),
    pytest.param([{"name": "a"}, {"name": "b", "reads": ["c"]}], {}, ["reads 'c'", "not an earlier layer"],
                 id="reads-unknown"),
    pytest.param([{"name": "a"}, {"name": "b", "reads": 5}], {}, ["reads", "5"], id="reads=5"),
]


@pytest.mark.parametrize("layers, kwargs, patterns", FROM_LAYERS)
def test_from_layers_refuses(layers: Any, kwargs: dict, patterns: list[str]) -> None:
    raises(lambda: ModelProfile.from_layers(layers, **kwargs), ProfileError, *patterns)


def test_from_layers_reads_one_name_as_one_layer() -> None:
    """``reads="embed"`` is one name, not five characters."""
    p = ModelProfile.from_layers([{"name": "embed", "params": 100}, {"name": "head", "params": 1, "reads": "embed"}])
    assert p.layers[1].params == 101 and p.total_params == 101


# ---------------------------------------------------------------------------
# ModelProfile.from_pytorch


class _Values(nn.Module):
    """A linear layer, then an op whose output shape (or path) depends on the values."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        if self.op == "nonzero":
            return y.nonzero()
        if self.op == "unique":
            return torch.unique(y)
        if self.op == "mask":
            return y[y > 0]
        return y if y.sum() > 0 else -y  # a branch on a value


LINEAR = nn.Sequential(nn.Linear(4, 3))
X = (torch.randn(2, 4),)

FROM_PYTORCH = [
    pytest.param(lambda: ModelProfile.from_pytorch(lambda x: x, X), ["nn.Module", "function", "torch.compile"],
                 id="a-function"),
    pytest.param(lambda: ModelProfile.from_pytorch("resnet50"), ["nn.Module", "str", "'resnet50'"], id="a-string"),
    pytest.param(lambda: ModelProfile.from_pytorch(None), ["nn.Module", "NoneType"], id="None"),
    pytest.param(lambda: ModelProfile.from_pytorch(nn.Linear), ["class Linear", "instance"], id="a-class"),
    *[pytest.param(lambda b=b: ModelProfile.from_pytorch(LINEAR, batch_size=b), ["batch_size", repr(b)],
                   id=f"batch_size={b!r}") for b in (0, -1, 1.5, "2", True)],
    *[pytest.param(lambda s=s: ModelProfile.from_pytorch(nn.Sequential(nn.Embedding(10, 4)), seq_len=s),
                   ["seq_len", repr(s)], id=f"seq_len={s!r}") for s in (0, -1, "8")],
    pytest.param(lambda: ModelProfile.from_pytorch(LINEAR, (torch.randn(0, 4),)), ["batch 0", "(0, 4)"],
                 id="inputs-of-batch-0"),
    pytest.param(lambda: ModelProfile.from_pytorch(LINEAR, dtype="fp8x"), ["dtype", "'fp8x'", "float16"],
                 id="dtype='fp8x'"),
    pytest.param(lambda: ModelProfile.from_pytorch(LINEAR, dtype=3), ["dtype", "3"], id="dtype=3"),
    pytest.param(lambda: ModelProfile.from_pytorch(LINEAR, (torch.ones(2, 4, dtype=torch.long),)),
                 ["model input 'input'", "int64", "float32", "linear"], id="int-input-to-linear"),
    pytest.param(lambda: ModelProfile.from_pytorch(nn.Linear(4, 3, device="meta"),
                                                   (torch.ones(2, 4, dtype=torch.long, device="meta"),)),
                 ["model input 'input'", "int64", "float32"], id="int-input-to-linear-on-meta"),
    pytest.param(lambda: ModelProfile.from_pytorch(nn.Linear(4, 3).half(), X),
                 ["model input 'input'", "float32", "pass the input(s) as float16"], id="fp32-input-to-fp16-linear"),
    *[pytest.param(lambda op=op: ModelProfile.from_pytorch(_Values(op), X),
                   ["depends on the values", "not supported", f"node {node}"], id=f"data-dependent-{op}")
      for op, node in (("nonzero", "nonzero"), ("unique", "_unique2"), ("mask", "index"))],
    pytest.param(lambda: ModelProfile.from_pytorch(_Values("branch"), X), ["decides on the value", "torch.cond"],
                 id="branch-on-a-value"),
    pytest.param(lambda: ModelProfile.from_pytorch(LINEAR, X, example_kwargs=5), ["example_kwargs", "int"],
                 id="example_kwargs=5"),
    pytest.param(lambda: ModelProfile.from_pytorch(LINEAR, (torch.randn(2, 5),)), ["could not trace", "[2, 5]"],
                 id="wrong-input-shape"),
]


@pytest.mark.parametrize("call, patterns", FROM_PYTORCH)
def test_from_pytorch_refuses(call: Callable[[], Any], patterns: list[str], capfd: pytest.CaptureFixture,
                              caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        raises(call, ProfileError, *patterns)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "def forward" not in err, f"torch printed its failure:\n{err[:2000]}"
    logged = [f"{r.name}: {r.getMessage()[:200]}" for r in caplog.records if r.name.startswith("torch")]
    assert not logged, f"torch logged its failure: {logged}"


@pytest.mark.parametrize("name", ["fp16", "float16", "half", "torch.float16", "bf16", "bfloat16", "fp32"])
def test_from_pytorch_takes_dtype_names(name: str) -> None:
    """A dtype's common name prices weights as the dtype does: Linear(8, 4) has 36 parameters."""
    width = {"fp32": 4}.get(name, 2)
    p = ModelProfile.from_pytorch(nn.Sequential(nn.Linear(8, 4)), dtype=name)
    assert p.weight_bytes == 36 * width
    assert p.dtype == {"fp32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}.get(name, torch.float16)


def test_matching_dtypes_are_not_flagged() -> None:
    """The dtype check refuses only a real mismatch: fp16 model on fp16 input, tokens into an embedding."""
    p = ModelProfile.from_pytorch(nn.Linear(4, 3).half(), (torch.randn(2, 4).half(),))
    assert p.layers[0].flops == 2 * 2 * 4 * 3
    emb = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))
    assert ModelProfile.from_pytorch(emb, (torch.zeros(2, 3, dtype=torch.long),)).num_layers == 2


# ---------------------------------------------------------------------------
# ModelProfile.from_onnx


def onnx_matmul() -> onnx.ModelProto:
    """x (batch, 8) @ w (8, 4), with a symbolic batch."""
    import numpy as np

    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="/fc/MatMul")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
                          [numpy_helper.from_array(np.ones((8, 4), np.float32), "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


FROM_ONNX = [
    *[pytest.param({"batch": v}, ProfileError, ["'batch'", repr(v)], id=f"batch={v!r}")
      for v in (-3, 0, "2", 2.0, True, None)],
    *[pytest.param({"x": v}, ProfileError, ["'x'", "axis 0", repr(v[0])], id=f"x=({v[0]!r}, 8)")
      for v in ((-3, 8), (0, 8), ("2", 8), (2.5, 8), (None, 8))],
    pytest.param([(-1, 8)], ProfileError, ["input 'x'", "-1"], id="by-position-(-1, 8)"),
    pytest.param({"x": 5}, ProfileError, ["'x'", "shape", "5"], id="x=5"),
    pytest.param({"btach": 2}, ProfileError, ["'batch'", "no value"], id="misspelt-dimension"),
    pytest.param({"x": (2, 8, 1)}, ProfileError, ["'x'", "2 dimensions"], id="too-many-dimensions"),
    pytest.param("batch", TypeError, ["input_shapes", "str"], id="a-string"),
]


@pytest.mark.parametrize("shapes, error, patterns", FROM_ONNX)
def test_from_onnx_refuses(shapes: Any, error: type[BaseException], patterns: list[str]) -> None:
    raises(lambda: ModelProfile.from_onnx(onnx_matmul(), input_shapes=shapes), error, *patterns)


def test_from_onnx_binds_a_valid_batch() -> None:
    """The refusals above leave the valid binding working: 2·B·8·4 FLOPs at B = 3."""
    p = ModelProfile.from_onnx(onnx_matmul(), input_shapes={"batch": 3, "seq": 7})  # "seq": for another model
    assert p.total_flops == 2 * 3 * 8 * 4 and p.boundaries[0][0].shape == (3, 8)


# ---------------------------------------------------------------------------
# placements and estimates

PROFILE5 = ModelProfile.from_layers([{"name": f"l{i}", "params": 10, "flops": 1e6, "activation_bytes": 100}
                                     for i in range(5)])
SEED = preset("seed")  # ground0 -> orbital0..3 -> ground1: six stages

PLACEMENTS = [
    pytest.param("@stage99:0-4", ["'@stage99'", "@stage0..@stage5", "ground0 -> orbital0"], id="@stage99"),
    pytest.param("@stagex:0-4", ["'@stagex'", "@stage0..@stage5"], id="@stagex"),
    pytest.param("ground:0-999", ["5-999", "out of range", "5 layers (0..4)"], id="ground:0-999"),
    pytest.param("ground:0-2", ["3-4", "not assigned"], id="missing-layers"),
    pytest.param("ground:0-4,orbital:2", ["layer 2", "2 times", "ground, orbital"], id="overlap"),
    pytest.param("ground:0-4,orbital:x,y,zz", ["'x', 'y', 'zz'", "l0, l1"], id="unknown-names"),
    pytest.param("mars:0-4", ["'mars'", "no such node"], id="unknown-node"),
    pytest.param("ground:0-1,orbital:2,ground:3,orbital:4", ["layer 4", "cannot return"], id="back-up-the-chain"),
]


@pytest.mark.parametrize("spec, patterns", PLACEMENTS)
def test_placement_validation_names_the_issue(spec: str, patterns: list[str]) -> None:
    placement = LayerPlacement.from_spec(spec)
    v = placement.validate(PROFILE5, SEED)
    assert not v.is_valid and v.stages is None
    text = "\n".join(v.issues)
    for p in patterns:
        assert p in text, f"{p!r} not in {v.issues}"
    assert len(v.issues) <= 4, v.issues
    # and estimating it is the same PlacementError, never an IndexError from the cost tables
    raises(lambda: LatencyEstimator(SEED).estimate(placement, PROFILE5), PlacementError, patterns[0])


def test_many_overlaps_are_summarised() -> None:
    v = LayerPlacement.from_spec("ground:0-4,orbital:0-4").validate(PROFILE5, SEED)
    assert len(v.issues) == 4 and "2 more layers" in v.issues[-1] and "3-4" in v.issues[-1]


BAD_SPECS = [
    pytest.param("ground:4-0", ["'4-0'", "backwards", "0-4"], id="reversed-range"),
    pytest.param("ground", ["'ground'", "ground:0-4"], id="no-colon"),
    pytest.param("ground:0-2;orbital", ["'orbital'", "node:layers"], id="no-colon-after-semicolon"),
    pytest.param(5, ["string", "mapping", "int"], id="an-int"),
    pytest.param({"ground": None}, ["'ground'", "None"], id="layers=None"),
]


@pytest.mark.parametrize("spec, patterns", BAD_SPECS)
def test_placement_spec_refuses(spec: Any, patterns: list[str]) -> None:
    raises(lambda: LayerPlacement.from_spec(spec), PlacementError, *patterns)


ASSIGN = [
    pytest.param(lambda: LayerPlacement().assign(1.5, "ground"), ["'ground'", "1.5"], id="assign-a-float"),
    pytest.param(lambda: LayerPlacement().assign([0, None], "ground"), ["None"], id="assign-None"),
    pytest.param(lambda: LayerPlacement().assign([0], None), ["node", "None"], id="node=None"),
]


@pytest.mark.parametrize("call, patterns", ASSIGN)
def test_assign_refuses(call: Callable[[], Any], patterns: list[str]) -> None:
    raises(call, PlacementError, *patterns)


STAGE_LISTS = [
    pytest.param([0, 0, 0, 0, 99], ["layer 4", "stage 99", "0..5"], id="stage-99"),
    pytest.param([0, 0, 0, 0, -1], ["layer 4", "stage -1", "0..5"], id="stage-(-1)"),
    pytest.param([0, 0, 0, 0, 1.5], ["integers", "1.5"], id="stage-1.5"),
    pytest.param([0, 0, 0, 0, True], ["integers", "True"], id="stage-True"),
    pytest.param([0, 0], ["2 layers", "has 5"], id="too-few"),
    pytest.param([0, 1, 0, 1, 1], ["non-decreasing"], id="back-and-forth"),
]


@pytest.mark.parametrize("stages, patterns", STAGE_LISTS)
def test_estimate_of_stages_refuses(stages: list, patterns: list[str]) -> None:
    raises(lambda: LatencyEstimator(SEED).estimate(stages, PROFILE5), PlacementError, *patterns)


# ---------------------------------------------------------------------------
# the command line: exit 2, a rotafx: line, no traceback


@pytest.fixture()
def user_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with a factory that raises, a module that does not parse and bad placement files."""
    (tmp_path / "userbad.py").write_text(
        "import torch\n"
        "def boom():\n"
        "    raise RuntimeError('factory went wrong')\n"
        "def number():\n"
        "    return 42\n"
        "def triple():\n"
        "    return 1, 2, 3\n")
    (tmp_path / "usersyntax.py").write_text("def f(:\n")
    (tmp_path / "userimport.py").write_text("raise KeyError('missing setting')\n")
    (tmp_path / "bad.json").write_text("{bad json")
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00")
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "ok.txt").write_text("ground:0-4\n")
    monkeypatch.chdir(tmp_path)
    for name in ("userbad", "usersyntax", "userimport"):
        sys.modules.pop(name, None)
    return tmp_path


CLI = [
    pytest.param(["profile", "userbad:boom"], ["factory 'userbad:boom'", "RuntimeError", "factory went wrong",
                                               "userbad.py:3"], id="factory-raises"),
    pytest.param(["profile", "usersyntax:f"], ["'usersyntax'", "syntax error", "usersyntax.py", "line 1"],
                 id="module-syntax-error"),
    pytest.param(["profile", "userimport:f"], ["'userimport'", "KeyError", "missing setting"], id="module-raises"),
    pytest.param(["profile", "nosuchmodule:f"], ["cannot import 'nosuchmodule'"], id="missing-module"),
    pytest.param(["profile", "userbad:nothere"], ["'userbad' has no 'nothere'", "boom"], id="missing-attribute"),
    pytest.param(["profile", "userbad:number"], ["'userbad:number'", "int", "nn.Module"], id="factory-gives-an-int"),
    pytest.param(["profile", "userbad:triple"], ["tuple of 3"], id="factory-gives-3-items"),
    pytest.param(["profile", "nosuchmodel"], ["unknown model 'nosuchmodel'", "small-gpt"], id="unknown-model"),
    pytest.param(["profile", ":f"], ["':f'", "package.module:factory"], id="empty-module"),
    pytest.param(["estimate", "mlp", "--placement-file", "missing.txt"], ["'missing.txt'", "does not exist"],
                 id="missing-placement-file"),
    pytest.param(["estimate", "mlp", "--placement-file", "bad.json"], ["'bad.json'", "not valid JSON", "line 1"],
                 id="bad-json-placement-file"),
    pytest.param(["estimate", "mlp", "--placement-file", "list.json"], ["'list.json'", "list"],
                 id="json-list-placement-file"),
    pytest.param(["estimate", "mlp", "--placement-file", "binary.txt"], ["'binary.txt'", "UTF-8"],
                 id="binary-placement-file"),
    pytest.param(["estimate", "mlp", "--placement-file", "empty.txt"], ["'empty.txt'", "empty"],
                 id="empty-placement-file"),
    pytest.param(["estimate", "mlp", "--placement-file", "."], ["'.'", "directory"], id="directory-placement-file"),
    pytest.param(["estimate", "mlp"], ["--placement"], id="no-placement"),
    pytest.param(["estimate", "mlp", "--placement", "ground:0-999"], ["5-999", "out of range", "5 layers"],
                 id="placement-0-999"),
    pytest.param(["estimate", "mlp", "--placement", "@stage99:0-4"], ["'@stage99'", "@stage0..@stage5"],
                 id="placement-@stage99"),
    pytest.param(["estimate", "mlp", "--placement", "ground:4-0"], ["'4-0'", "backwards"], id="placement-reversed"),
    pytest.param(["optimize", "mlp", "--time-limit", "abc"], ["--time-limit", "'abc'"], id="time-limit-abc"),
    pytest.param(["optimize", "mlp", "--time-limit", "-1"], ["time_limit", "-1"], id="time-limit-(-1)"),
    pytest.param(["optimize", "mlp", "--time-limit", "nan"], ["time_limit", "nan"], id="time-limit-nan"),
    pytest.param(["optimize", "mlp", "--batch-size", "0"], ["--batch-size", "'0'"], id="batch-size-0"),
    pytest.param(["profile", "mlp", "--rows", "-1"], ["--rows", "'-1'"], id="rows-(-1)"),
    pytest.param(["profile", "small-gpt", "--seq-len", "64"], ["small-gpt", "32", "seq_len=64"],
                 id="seq-len-too-long"),
    pytest.param(["profile", "mlp", "--dtype", "fp8"], ["--dtype", "'fp8'"], id="dtype-fp8"),
    pytest.param(["nosuchcommand"], ["'nosuchcommand'", "profile"], id="unknown-command"),
    pytest.param(["serve", "--plan", "no-plan-here", "--stage", "0"], ["no plan at 'no-plan-here'"],
                 id="serve-missing-plan"),
]


def one_error_line(err: str) -> str:
    """stderr of a refused command: a rotafx: line (a placement's issues indented under it), no traceback."""
    lines = err.strip().splitlines()
    assert lines and lines[0].startswith("rotafx: "), err
    assert "Traceback" not in err, err
    assert all(line.startswith("  ") for line in lines[1:]), err
    assert len(lines) <= 4, err
    return err


@pytest.mark.parametrize("argv, patterns", CLI)
def test_cli_user_error_exits_2(argv: list[str], patterns: list[str], user_files: Path,
                                capsys: pytest.CaptureFixture) -> None:
    rc = main([*argv, "--quiet"] if argv[0] in ("profile", "estimate", "optimize") else argv)
    err = one_error_line(capsys.readouterr().err)
    assert rc == 2, err
    for p in patterns:
        assert p in err, f"{p!r} not in: {err}"


def test_cli_unreadable_placement_file(user_files: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture) -> None:
    def denied(self: Path, *args: Any, **kwargs: Any) -> str:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", denied)  # as root, chmod 000 would not stop the read
    assert main(["estimate", "mlp", "--quiet", "--placement-file", "ok.txt"]) == 2
    err = one_error_line(capsys.readouterr().err)
    assert "cannot read placement file 'ok.txt'" in err and "Permission denied" in err


@pytest.fixture(scope="module")
def plan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("plan") / "mlp"
    assert main(["export", "mlp", "--quiet", "--path", str(path)]) == 0
    return path


SERVE = [
    pytest.param(["--stage", "7"], {}, ["--stage 7", "1 stage(s), 0..0"], id="stage-out-of-range"),
    pytest.param(["--stage", "-1"], {}, ["--stage -1"], id="stage-(-1)"),
    pytest.param(["--stage", "0", "--master-port", "99999"], {}, ["--master-port", "99999", "1..65535"],
                 id="port-99999"),
    pytest.param(["--stage", "0"], {"MASTER_PORT": "abc"}, ["MASTER_PORT", "'abc'"], id="MASTER_PORT=abc"),
    pytest.param(["--stage", "0", "--join-timeout", "0"], {}, ["--join-timeout", "0"], id="join-timeout-0"),
    pytest.param(["--stage", "0", "--timeout", "-1"], {}, ["--timeout", "-1"], id="timeout-(-1)"),
]


@pytest.mark.parametrize("argv, env, patterns", SERVE)
def test_cli_serve_refuses_before_joining(argv: list[str], env: dict, patterns: list[str], plan_dir: Path,
                                          monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(["serve", "--plan", str(plan_dir), *argv]) == 2
    err = one_error_line(capsys.readouterr().err)
    for p in patterns:
        assert p in err, f"{p!r} not in: {err}"


def test_cli_serve_without_a_driver_is_a_stage_failure(plan_dir: Path, capsys: pytest.CaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """No driver listening: a failure of the cluster (exit 3, as every failure while serving), one rotafx: line."""
    monkeypatch.setenv("ROTAFX_SECRET", "a secret long enough for the cluster")
    rc = main(["serve", "--plan", str(plan_dir), "--stage", "0", "--master-port", "29599", "--join-timeout", "1"])
    err = capsys.readouterr().err
    assert rc == 3, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("rotafx: "), err
    assert "stage 0" in err or "driver" in err, err


def test_cli_shows_a_bug_in_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception that is not a user error (here, a ValueError from outside rotafx) propagates with its traceback."""
    def broken(*args: Any, **kwargs: Any) -> None:
        int("not a number")  # a ValueError raised in this file, not by rotafx

    monkeypatch.setattr(ModelProfile, "from_pytorch", broken)
    with pytest.raises(ValueError, match="not a number"):
        main(["profile", "mlp", "--quiet"])
    monkeypatch.setattr(ModelProfile, "from_pytorch", lambda *a, **k: {}["missing"])
    with pytest.raises(KeyError):
        main(["profile", "mlp", "--quiet"])


def test_cli_seq_len_reaches_a_built_in_token_model() -> None:
    """``--seq-len`` was ignored for the built-in examples; now the tokens are as asked."""
    _, inputs = load_model("small-gpt", batch_size=2, seq_len=16)
    assert inputs is not None and tuple(inputs[0].shape) == (2, 16)
    assert tuple(load_model("small-gpt")[1][0].shape) == tuple(example_inputs("small-gpt", 1)[0].shape) == (1, 32)


def rotafx_exe() -> list[str]:
    exe = shutil.which("rotafx") or str(Path(sys.executable).parent / "rotafx")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "rotafx.cli"]


@pytest.mark.parametrize("argv, pattern", [
    pytest.param(["profile", "userbad:boom", "--quiet"], "factory went wrong", id="factory-raises"),
    pytest.param(["estimate", "mlp", "--quiet", "--placement-file", "missing.txt"], "does not exist",
                 id="missing-placement-file"),
])
def test_console_script_prints_no_traceback(argv: list[str], pattern: str, user_files: Path) -> None:
    out = subprocess.run([*rotafx_exe(), *argv], capture_output=True, text=True, timeout=300, cwd=user_files)
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("rotafx: ") and pattern in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
