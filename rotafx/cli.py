"""The ``rotafx`` command: profile a model, estimate a placement, optimise a partition."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from .costmodel import MEMORY_RULES
from .estimate import LatencyEstimator
from . import models
from .layers import ProfileError
from .objective import OBJECTIVES
from .placement import LayerPlacement, PlacementError
from .plan.write import export
from .profile import ModelProfile
from .runtime.distributed.stage import add_serve_args, serve_from_args
from .solve import SOLVERS, InfeasibleError, PartitionOptimizer
from .topology import PRESETS, Topology, TopologyError
from .wire import CODECS

__all__ = ["main", "load_model"]

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def load_model(spec: str, batch_size: int = 1) -> tuple[torch.nn.Module, tuple | None]:
    """A built-in example name (``llama70b``, ``small-gpt``, ``mlp``, ``convnet``) or ``package.module:factory``.

    Returns the model and example inputs (None when the factory gives none).
    """
    if spec in models.EXAMPLES:
        return models.EXAMPLES[spec](), models.example_inputs(spec, batch_size)
    if ":" not in spec:
        raise SystemExit(f"rotafx: unknown model {spec!r}; use a built-in example ({', '.join(models.EXAMPLES)}) "
                         f"or package.module:factory")
    mod_name, attr = spec.split(":", 1)
    sys.path.insert(0, str(Path.cwd()))
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise SystemExit(f"rotafx: cannot import {mod_name!r} for model {spec!r}: {e}") from None
    if not hasattr(mod, attr):
        raise SystemExit(f"rotafx: module {mod_name!r} has no {attr!r}")
    obj = getattr(mod, attr)
    model = obj() if callable(obj) and not isinstance(obj, torch.nn.Module) else obj
    if isinstance(model, tuple):  # a factory may return (model, example_inputs)
        return model[0], tuple(model[1]) if isinstance(model[1], (tuple, list)) else (model[1],)
    if not isinstance(model, torch.nn.Module):
        raise SystemExit(f"rotafx: {spec!r} gave a {type(model).__name__}, not an nn.Module")
    return model, None


def _profile(args: argparse.Namespace) -> ModelProfile:
    model, inputs = load_model(args.model, args.batch_size)
    dtype = DTYPES[args.dtype] if args.dtype else None
    return ModelProfile.from_pytorch(model, inputs, dtype=dtype, batch_size=None if inputs is not None else args.batch_size,
                                     seq_len=args.seq_len, progress=not args.quiet)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="built-in example (llama70b, small-gpt, mlp, convnet) or package.module:factory")
    p.add_argument("--batch-size", type=int, default=1, help="batch size of the example inputs (default 1)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence for token models (default 128)")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="price floating tensors at this dtype (e.g. fp16)")
    p.add_argument("--quiet", action="store_true", help="no progress messages")


def _add_topology_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--topology", default="seed", help=f"preset ({', '.join(PRESETS)}) or a JSON/YAML/TOML file")
    p.add_argument("--codec", choices=["none", *CODECS], default=None, help="compress transfers")
    p.add_argument("--memory-rule", choices=MEMORY_RULES, default="liveness")


def cmd_profile(args: argparse.Namespace) -> int:
    prof = _profile(args)
    print(prof.summary(max_rows=args.rows))
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    topo = Topology.coerce(args.topology)
    if args.placement_file:
        text = Path(args.placement_file).read_text()
        spec: Any = json.loads(text) if args.placement_file.endswith(".json") else text.strip()
    elif args.placement:
        spec = args.placement
    else:
        raise SystemExit("rotafx: give --placement 'ground:0-4,orbital:5-74,ground:75-79' or --placement-file")
    placement = LayerPlacement.from_spec(spec)
    prof = _profile(args)
    v = placement.validate(prof, topo, memory_rule=args.memory_rule)
    if not v.is_valid:
        print("invalid placement:\n  " + "\n  ".join(v.issues), file=sys.stderr)
        return 2
    est = LatencyEstimator(topo, codec=args.codec, memory_rule=args.memory_rule).estimate(placement, prof)
    print(est.report(f"{prof.name} on {args.topology}"))
    if args.by_layer:
        for le in est.by_layer:
            print(f"  {le.index:>4} {le.name:<28} {le.total_ms:>10.3f} ms on {le.node}")
    return 0


def cmd_optimize(args: argparse.Namespace) -> int:
    prof = _profile(args)
    opt = PartitionOptimizer(solver=args.solver, time_limit=args.time_limit, codec=args.codec, memory_rule=args.memory_rule)
    try:
        part = opt.optimize(model=prof, topology=args.topology, objective=args.objective)
    except InfeasibleError as e:
        print(f"rotafx: infeasible: {e}", file=sys.stderr)
        return 2
    print(part.report())
    return 0


def cmd_topology(args: argparse.Namespace) -> int:
    print(Topology.coerce(args.topology).describe())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    model, inputs = load_model(args.model, args.batch_size)
    if inputs is None:
        raise SystemExit(f"rotafx: {args.model!r} gives no example inputs; export needs them (a factory may return "
                         f"(module, example_inputs))")
    if any(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in inputs):
        raise SystemExit(f"rotafx: {args.model!r} lives on the meta device (no weights); export a model with real weights")
    options: dict[str, Any] = {"codec": args.codec, "memory_rule": args.memory_rule, "solver": args.solver,
                               "time_limit": args.time_limit}
    plan = export(model.eval(), inputs, path=args.path, topology=args.topology, objective=args.objective,
                  overwrite=args.overwrite, **options)
    est = plan.estimate
    print(f"wrote {args.path}: {plan.num_stages} stage(s), objective {plan.objective}, "
          f"estimated {est.get('total_ms', float('nan')):.3f} ms per request")
    for st in plan.stages:
        print(f"  stage {st.index}: {st.node:<12} {st.file:<12} {len(st.inputs)} in, {len(st.outputs)} out, "
              f"{st.weight_bytes / 1e6:.3f} MB of weights")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    return serve_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rotafx", description="Profile a model, place its layers on ground and orbital "
                                 "nodes (or any chain of devices), estimate and optimise the cost.")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("profile", help="print the layer table of a model")
    _add_model_args(p)
    p.add_argument("--rows", type=int, default=None, help="show at most this many layers")
    p.set_defaults(func=cmd_profile)
    p = sub.add_parser("estimate", help="estimate a hand placement")
    _add_model_args(p)
    _add_topology_args(p)
    p.add_argument("--placement", help="e.g. 'ground:0-5,orbital:6-75,ground:76-82' (node kinds or node names)")
    p.add_argument("--placement-file", help="a file holding the placement string, or JSON {node: [layers]}")
    p.add_argument("--by-layer", action="store_true", help="also print every layer's time")
    p.set_defaults(func=cmd_estimate)
    p = sub.add_parser("optimize", help="find the optimal partition")
    _add_model_args(p)
    _add_topology_args(p)
    p.add_argument("--objective", default="minimize_latency", choices=OBJECTIVES)
    p.add_argument("--solver", default="milp", choices=SOLVERS)
    p.add_argument("--time-limit", type=float, default=60.0, help="seconds for the MILP (default 60)")
    p.set_defaults(func=cmd_optimize)
    p = sub.add_parser("export", help="partition a model and write a plan directory (plan.json + one program per stage)")
    _add_model_args(p)
    _add_topology_args(p)
    p.add_argument("--objective", default="minimize_latency", choices=OBJECTIVES)
    p.add_argument("--solver", default=None, choices=SOLVERS)
    p.add_argument("--time-limit", type=float, default=60.0, help="seconds for the MILP (default 60)")
    p.add_argument("--path", required=True, help="the plan directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing plan directory")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("serve", help="run one stage of a plan in this process (the driver is rank 0 at MASTER_ADDR:MASTER_PORT)")
    add_serve_args(p)
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("topology", help="describe a topology preset or file")
    p.add_argument("topology", help="preset name or file")
    p.set_defaults(func=cmd_topology)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rotafx`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (TopologyError, ProfileError, PlacementError, ValueError) as e:
        msg = str(e)
        print(msg if msg.startswith("rotafx:") else f"rotafx: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
