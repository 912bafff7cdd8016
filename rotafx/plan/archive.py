"""Stage programs from someone else, read as data: a ``.pt2`` archive is checked before torch reads any of it.

``torch.export.load`` trusts its archive: it unpickles example inputs, tensor subclasses and
custom objects (falling back to ``torch.load(weights_only=False)``), compiles the program's
``guards_code`` strings into Python, evaluates shape expressions with ``sympy.sympify`` (an
``eval``) and resolves every node target as an attribute path under ``torch`` (``torch.load``
would do). :func:`read_program` reads the file once, checks what it holds, and hands torch an
archive with nothing left that could run code:

* members: the program (JSON), raw weight and constant bytes, their JSON configs and the
  archive's version records; anything else (a pickled legacy weight file, an AOTInductor
  library, a custom or opaque object) is refused, as is any payload marked to be unpickled;
* the example inputs (a pickle, which rotafx never needs) are dropped;
* node targets: operators (``torch.ops.<namespace>.<op>``), ``operator.*``, ``math.*`` and
  torch's symbolic-size functions only; no extension operators, no custom objects;
* shape expressions: numbers, operators, size symbols and torch's sympy functions only;
* ``guards_code`` is dropped (rotafx checks every request's shapes against ``plan.json``).

Anything refused raises :class:`~rotafx.plan.schema.PlanError` naming the file and what it holds.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from .schema import PlanError

__all__ = ["read_program", "check_program_json"]

# archive members (after the archive's top folder) that hold data torch reads without unpickling
_DATA_MEMBER = re.compile(r"^(models/\w+\.json|data/(weights|constants)/\w+_config\.json|data/weights/weight_\d+|"
                          r"data/constants/tensor_\d+|data/sample_inputs/\w+\.pt|archive_format|archive_version|"
                          r"byteorder|\.data/version|\.data/serialization_id)$")
_SAMPLE_INPUTS = re.compile(r"^data/sample_inputs/\w+\.pt$")
_TARGET = re.compile(r"^(torch\.ops\.[A-Za-z_]\w*\.[A-Za-z_]\w*(\.[A-Za-z_]\w*)?|_operator\.[A-Za-z_]\w*|"
                     r"math\.[A-Za-z_]\w*|torch\.(sym_\w+|_sym_sqrt))$")
# what a shape expression may name besides size symbols (s0, u3): torch's sympy functions and constants
_SYMPY_NAMES = {
    "Max", "Min", "FloorDiv", "CeilDiv", "CleanDiv", "ModularIndexing", "Mod", "PythonMod", "IntTrueDiv",
    "FloatTrueDiv", "ToFloat", "TruncToInt", "TruncToFloat", "RoundToInt", "RoundDecimal", "Pow", "PowByNatural",
    "FloatPow", "Where", "Identity", "IsNonOverlappingAndDenseIndicator", "LShift", "RShift", "BitwiseFn_bitwise_and",
    "BitwiseFn_bitwise_or", "BitwiseFn_bitwise_xor", "OpaqueUnaryFn_sqrt", "OpaqueUnaryFn_exp", "OpaqueUnaryFn_log",
    "floor", "ceiling", "Abs", "sqrt", "Eq", "Ne", "Ge", "Gt", "Le", "Lt", "And", "Or", "Not", "oo", "zoo", "nan",
    "True", "False", "Integer", "Rational", "Float", "Mul", "Add",
}
_EXPR = re.compile(r"^[\w\s+\-*/%(),.<>=!&|~^]*$")
_NAME = re.compile(r"[A-Za-z_]\w*")
_SYMBOL = re.compile(r"^[a-z]+\d+$")


def read_program(path: Path, expected_sha256: str | None, where: str) -> Any:
    """The ``ExportedProgram`` in ``path``, read once and checked (see the module docstring); ``expected_sha256``, when
    given, must be the file's. ``where`` names the stage in errors."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PlanError(f"rotafx: {where}: cannot read {path}: {e}") from None
    if expected_sha256 is not None:
        digest = hashlib.sha256(raw).hexdigest()
        if digest != expected_sha256:
            raise PlanError(f"rotafx: {where}: {path} does not match plan.json (sha256 {digest[:12]}… but the plan says "
                            f"{expected_sha256[:12]}…); the file comes from another export: copy the whole plan "
                            f"directory again")
    cleaned = _clean_archive(raw, path, where)
    try:
        return torch.export.load(io.BytesIO(cleaned))
    except PlanError:
        raise
    except Exception as e:
        raise PlanError(f"rotafx: {where}: {path} is not a torch.export program: "
                        f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from e


def _clean_archive(raw: bytes, path: Path, where: str) -> bytes:
    """The archive with its members checked, the example inputs emptied and the guards code dropped."""
    try:
        zin = zipfile.ZipFile(io.BytesIO(raw))
        infos = zin.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise PlanError(f"rotafx: {where}: {path} is not a torch.export program (not a .pt2 archive: {e})") from None
    tops = {i.filename.split("/", 1)[0] for i in infos}
    if len(tops) != 1:
        raise PlanError(f"rotafx: {where}: {path} is not one torch.export program (top folders {sorted(tops)})")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
        for info in infos:
            member = info.filename.split("/", 1)[1] if "/" in info.filename else ""
            if info.is_dir() or member == "":
                continue
            if not _DATA_MEMBER.match(member):
                raise PlanError(f"rotafx: {where}: {path} holds {member!r}, which rotafx does not load from a plan "
                                f"(only programs, raw tensors and their configs: nothing that is unpickled or run)")
            data = zin.read(info)
            if _SAMPLE_INPUTS.match(member):
                data = b""  # a pickle of example inputs: not needed, never read
            elif member.endswith(".json"):
                data = _checked_json(data, member, path, where)
            zout.writestr(info, data)
    return out.getvalue()


def _checked_json(data: bytes, member: str, path: Path, where: str) -> bytes:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise PlanError(f"rotafx: {where}: {path}: {member} is not JSON ({type(e).__name__})") from None
    if member.endswith("_config.json"):
        for name, meta in ((doc or {}).get("config") or {}).items():
            if isinstance(meta, dict) and (meta.get("use_pickle") or not str(meta.get("path_name", "")).startswith(
                    ("weight_", "tensor_"))):
                raise PlanError(f"rotafx: {where}: {path}: {name!r} would be unpickled (a tensor subclass or a "
                                f"custom object); rotafx loads plans whose weights are plain tensors")
        return data
    check_program_json(doc, f"{where}: {path}")
    doc["guards_code"] = []
    return json.dumps(doc).encode()


def check_program_json(doc: Any, where: str) -> None:
    """Refuse a serialized program that names anything but operators, or an expression that is not arithmetic."""
    if not isinstance(doc, dict) or "graph_module" not in doc:
        raise PlanError(f"rotafx: {where}: the program is not a serialized torch.export program")
    stack: list[Any] = [doc]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            for k, v in o.items():
                if k == "target" and isinstance(v, str) and not _TARGET.match(v):
                    raise PlanError(f"rotafx: {where}: a node calls {v!r}; a plan's programs call operators only")
                if k == "custom_obj_values" and v:
                    raise PlanError(f"rotafx: {where}: the program holds custom objects, which would be unpickled")
                if k == "expr_str" and isinstance(v, str):
                    _check_expr(v, where)
                if k == "range_constraints" and isinstance(v, dict):
                    for name in v:
                        _check_expr(str(name), where)
                stack.append(v)
        elif isinstance(o, list):
            stack.extend(o)


def _check_expr(expr: str, where: str) -> None:
    """A shape expression torch will ``sympify``: numbers, operators, size symbols and its sympy functions only."""
    bad = not _EXPR.match(expr) or re.search(r"\.\s*[A-Za-z_]", expr) or any(
        not (_SYMBOL.match(name) or name in _SYMPY_NAMES) for name in _NAME.findall(expr))
    if bad:
        raise PlanError(f"rotafx: {where}: the program holds the shape expression {expr[:80]!r}, which is not "
                        f"arithmetic on sizes; refusing to evaluate it")
