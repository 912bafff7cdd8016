"""The ``rotafx`` command: profile a model, estimate a placement, optimise a partition."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Any, NoReturn, Sequence

import torch

from .costmodel import MEMORY_RULES
from .estimate import LatencyEstimator
from . import models
from .frontends.dtypes import torch_dtype
from .layers import CostRuleError
from .objective import OBJECTIVES
from .placement import LayerPlacement
from .plan.schema import PlanError, read_plan
from .plan.write import export
from .profile import ModelProfile
from .rewrite import RewriteError
from .runtime.distributed.stage import add_serve_args, serve_from_args
from .runtime.distributed.transport import endpoint_from_env
from .solve import SOLVERS, InfeasibleError, PartitionOptimizer
from .topology import PRESETS, Topology
from .wire import CODECS

__all__ = ["main", "load_model", "UsageError"]

DTYPES = ("fp32", "float32", "fp16", "float16", "bf16", "bfloat16")  # names rotafx.frontends.dtypes reads
_PACKAGE_DIR = Path(__file__).resolve().parent


class UsageError(ValueError):
    """A command line the CLI cannot act on (a model path, a placement file, an option); printed on one line, exit 2."""


def load_model(spec: str, batch_size: int = 1, seq_len: int | None = None) -> tuple[torch.nn.Module, tuple | None]:
    """A built-in example name (``llama70b``, ``small-gpt``, ``mlp``, ``convnet``) or ``package.module:factory``.

    Args:
        spec: the example's name, or ``module:attr`` where ``attr`` is a module instance or a
            factory returning a module or ``(module, example_inputs)``.
        batch_size: the batch of a built-in example's inputs.
        seq_len: tokens per sequence of a built-in token model (``None``: its default).

    Returns:
        The model and example inputs (``None`` when the factory gives none).

    Raises:
        UsageError: an unknown name, a module that cannot be imported (missing, a syntax
            error, an error while importing), a missing attribute, a factory that raises
            (its name and message), or one that gives no module.

    >>> model, inputs = load_model("mlp", batch_size=2)
    >>> inputs[0].shape
    torch.Size([2, 64])
    """
    if spec in models.EXAMPLES:
        return models.EXAMPLES[spec](), models.example_inputs(spec, batch_size, seq_len=seq_len)
    if ":" not in spec:
        raise UsageError(f"rotafx: unknown model {spec!r}; use a built-in example ({', '.join(models.EXAMPLES)}) "
                         f"or package.module:factory")
    mod_name, attr = spec.split(":", 1)
    if not mod_name or not attr:
        raise UsageError(f"rotafx: model {spec!r} must be package.module:factory (both parts)")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # a factory may import its neighbours when called
    try:
        mod = importlib.import_module(mod_name)
    except SyntaxError as e:
        raise UsageError(f"rotafx: cannot import {mod_name!r} for model {spec!r}: syntax error in {e.filename}, line "
                         f"{e.lineno}: {e.msg}") from None
    except ImportError as e:
        raise UsageError(f"rotafx: cannot import {mod_name!r} for model {spec!r}: {e}") from None
    except Exception as e:  # the module's own code failed while importing: the user's error, reported as such
        raise UsageError(f"rotafx: importing {mod_name!r} for model {spec!r} raised {type(e).__name__}: {e}"
                         f"{_where_raised(e)}") from None
    if not hasattr(mod, attr):
        public = [n for n in dir(mod) if not n.startswith("_")][:8]
        raise UsageError(f"rotafx: module {mod_name!r} has no {attr!r} (it has {', '.join(public) or 'nothing public'})")
    obj = getattr(mod, attr)
    if callable(obj) and not isinstance(obj, torch.nn.Module):
        try:
            model = obj()
        except Exception as e:  # the factory is the user's code: name it and keep its message
            raise UsageError(f"rotafx: the factory {spec!r} raised {type(e).__name__}: {e}{_where_raised(e)}") from None
    else:
        model = obj
    if isinstance(model, tuple):  # a factory may return (model, example_inputs)
        if len(model) != 2:
            raise UsageError(f"rotafx: {spec!r} gave a tuple of {len(model)} items; a factory returns a module or "
                             f"(module, example_inputs)")
        model, inputs = model
        if not isinstance(model, torch.nn.Module):
            raise UsageError(f"rotafx: {spec!r} gave ({type(model).__name__}, ...), not (nn.Module, example_inputs)")
        return model, tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"rotafx: {spec!r} gave a {type(model).__name__}, not an nn.Module")
    return model, None


def _where_raised(e: BaseException) -> str:
    """`` (file:line)`` of the innermost frame that raised ``e``."""
    frames = traceback.extract_tb(e.__traceback__)
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def _profile(args: argparse.Namespace) -> ModelProfile:
    model, inputs = load_model(args.model, args.batch_size, args.seq_len)
    if args.prompt_len is not None or args.new_tokens is not None:
        # token generation: the prefill of the prompt and one decode step against the KV cache
        return ModelProfile.for_generation(model, prompt_len=args.prompt_len or args.seq_len or 128,
                                           new_tokens=args.new_tokens or 128, batch_size=args.batch_size,
                                           sequences=args.sequences, dtype=torch_dtype(args.dtype),
                                           progress=not args.quiet)
    if args.sequences != 1:
        raise UsageError(f"rotafx: --sequences {args.sequences} counts sequences generating at once; it needs "
                         f"--prompt-len and/or --new-tokens (a generation workload)")
    return ModelProfile.from_pytorch(model, inputs, dtype=torch_dtype(args.dtype),
                                     batch_size=None if inputs is not None else args.batch_size,
                                     seq_len=args.seq_len or 128, progress=not args.quiet)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="built-in example (llama70b, small-gpt, mlp, convnet) or package.module:factory")
    p.add_argument("--batch-size", type=_positive_int, default=1, help="batch size of the example inputs (default 1)")
    p.add_argument("--seq-len", type=_positive_int, default=None,
                   help="tokens per sequence for token models (default: the example's own, 128 otherwise)")
    p.add_argument("--dtype", choices=DTYPES, help="price floating tensors at this dtype (e.g. fp16)")
    p.add_argument("--prompt-len", type=_positive_int, default=None,
                   help="generate tokens: the prompt's length (prefill); default --seq-len, or 128 with --new-tokens")
    p.add_argument("--new-tokens", type=_positive_int, default=None,
                   help="generate tokens: how many (one decode step each); default 128 with --prompt-len")
    p.add_argument("--sequences", type=_positive_int, default=1,
                   help="with --prompt-len/--new-tokens: batches of --batch-size sequences in flight at once (default 1)")
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
        spec: Any = _read_placement_file(args.placement_file)
    elif args.placement:
        spec = args.placement
    else:
        raise UsageError("rotafx: give --placement 'ground:0-4,orbital:5-74,ground:75-79' or --placement-file")
    placement = LayerPlacement.from_spec(spec)
    prof = _profile(args)
    v = placement.validate(prof, topo, memory_rule=args.memory_rule)
    if not v.is_valid:
        print("rotafx: invalid placement:\n  " + "\n  ".join(v.issues), file=sys.stderr)
        return 2
    est = LatencyEstimator(topo, codec=args.codec, memory_rule=args.memory_rule).estimate(placement, prof)
    print(est.report(f"{prof.name} on {args.topology}"))
    if args.by_layer:
        for le in est.by_layer:
            print(f"  {le.index:>4} {le.name:<28} {le.total_ms:>10.3f} ms on {le.node}")
    return 0


def _read_placement_file(path: str) -> Any:
    """The placement a ``--placement-file`` holds: JSON ``{node: layers}`` (a ``.json`` file) or the string form."""
    f = Path(path)
    if f.is_dir():
        raise UsageError(f"rotafx: placement file {path!r} is a directory; give a file holding the placement")
    try:
        text = f.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"rotafx: placement file {path!r} does not exist") from None
    except OSError as e:
        raise UsageError(f"rotafx: cannot read placement file {path!r}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"rotafx: placement file {path!r} is not UTF-8 text (byte {e.start}); write the placement as "
                         f"text: 'ground:0-4,orbital:5-74' or JSON {{\"ground\": [0, 1]}}") from None
    if not path.endswith(".json"):
        if not text.strip():
            raise UsageError(f"rotafx: placement file {path!r} is empty; write e.g. 'ground:0-4,orbital:5-74,ground:75-79'")
        return text.strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"rotafx: placement file {path!r} is not valid JSON: {e.msg} at line {e.lineno}, column "
                         f"{e.colno}") from None
    if not isinstance(data, (dict, str)):
        raise UsageError(f"rotafx: placement file {path!r} holds a JSON {type(data).__name__}; write an object "
                         f"{{\"ground\": \"0-4\", \"orbital\": [5, 6]}} or a string")
    return data


def cmd_optimize(args: argparse.Namespace) -> int:
    opt = PartitionOptimizer(solver=args.solver, time_limit=args.time_limit, codec=args.codec, memory_rule=args.memory_rule)
    topo = Topology.coerce(args.topology)  # a bad option or topology file is reported before profiling
    prof = _profile(args)
    try:
        part = opt.optimize(model=prof, topology=topo, objective=args.objective)
    except InfeasibleError as e:
        print(f"rotafx: infeasible: {e}", file=sys.stderr)
        return 2
    print(part.report())
    return 0


def cmd_topology(args: argparse.Namespace) -> int:
    print(Topology.coerce(args.topology).describe())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    model, inputs = load_model(args.model, args.batch_size, args.seq_len)
    if inputs is None:
        raise UsageError(f"rotafx: {args.model!r} gives no example inputs; export needs them (a factory may return "
                         f"(module, example_inputs))")
    if any(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in inputs):
        raise UsageError(f"rotafx: {args.model!r} lives on the meta device (no weights); export a model with real weights")
    options: dict[str, Any] = {"codec": args.codec, "memory_rule": args.memory_rule, "solver": args.solver,
                               "time_limit": args.time_limit}
    plan = export(model.eval(), inputs, path=args.path, topology=args.topology, objective=args.objective,
                  overwrite=args.overwrite, max_context=args.max_context, **options)
    est = plan.estimate
    print(f"wrote {args.path}: {plan.num_stages} stage(s), objective {plan.objective}, "
          f"estimated {est.get('total_ms', float('nan')):.3f} ms per request")
    for st in plan.stages:
        print(f"  stage {st.index}: {st.node:<12} {st.file:<12} {len(st.inputs)} in, {len(st.outputs)} out, "
              f"{st.weight_bytes / 1e6:.3f} MB of weights")
    if plan.generation is not None:
        g = plan.generation
        print(f"  generation: prefill and decode programs per stage, max context {g.max_context} tokens, "
              f"prefill chunk {g.prefill_chunk}; each stage keeps its layers' KV cache")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Check the command line (plan, stage, address, timeouts), then serve; a cluster's failure exits 3."""
    plan = read_plan(args.plan)  # PlanError: no plan there, or not a readable one
    if not 0 <= args.stage < plan.num_stages:
        raise UsageError(f"rotafx: --stage {args.stage} is not a stage of the plan at {args.plan!r}: it has "
                         f"{plan.num_stages} stage(s), 0..{plan.num_stages - 1}")
    try:  # --master-port, $ROTAFX_PORT, or torchrun's MASTER_PORT (+1 under its agent store)
        port = endpoint_from_env(None, args.master_port)[1]
    except ValueError as e:
        raise UsageError(str(e)) from None
    if not 1 <= port <= 65535:
        where = "--master-port" if args.master_port is not None else "the driver's port"
        raise UsageError(f"rotafx: {where} must be a TCP port 1..65535, got {port}")
    args.master_port = port
    for name in ("timeout", "idle_timeout", "join_timeout"):
        value = getattr(args, name)
        if not (value > 0 and math.isfinite(value)):
            raise UsageError(f"rotafx: --{name.replace('_', '-')} must be a positive number of seconds, got {value!r}")
    return serve_from_args(args)


def cmd_compare(args: argparse.Namespace) -> int:
    """Export the optimizer's plan (or take a plan directory), run it here, print estimate vs measured per stage."""
    from .measured import estimate_vs_measured

    model, inputs = load_model(args.model, args.batch_size, args.seq_len)
    if inputs is None or any(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in inputs):
        raise UsageError(f"rotafx: {args.model!r} gives no example inputs with real weights; compare runs the model "
                         f"(a factory may return (module, example_inputs))")
    Topology.coerce(args.topology)  # a bad topology is reported before anything is exported
    generation = None
    if args.prompt_len is not None or args.new_tokens is not None:  # TTFT and TPOT of generations, in this process
        generation = {"prompt_len": args.prompt_len or args.seq_len or 128, "new_tokens": args.new_tokens or 128,
                      "sequences": args.sequences}
    cmp = estimate_vs_measured(model.eval(), inputs, repeats=args.repeats, threads=args.threads,
                               emulate_links=not args.no_emulate, topology=args.topology, objective=args.objective,
                               codec=args.codec, memory_rule=args.memory_rule, generation=generation,
                               processes=args.processes)
    print(cmp.report())
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """Plan the horizon of a schedule (resident layers, a route per interval) and simulate its requests."""
    from .orbits import Schedule
    from .orbits.horizon import plan_horizon
    from .orbits.simulate import simulate

    if args.plot is not None:  # a bad picture name or a missing matplotlib is said before the horizon's solve
        if Path(args.plot).suffix.lower() not in (".png", ".svg"):
            raise UsageError(f"rotafx: --plot {args.plot}: write a .png or a .svg file")
        try:
            from .plot import day, save
        except ImportError as e:
            raise UsageError(f"rotafx: --plot needs matplotlib: pip install rotafx[plot] ({e})") from None
    topo = Topology.coerce(args.topology)
    sched = Schedule.from_dict(_read_data_file(args.schedule, "schedule"))
    unknown = sorted({n for link in sched.windows for n in link} - set(topo.devices))
    if unknown:
        raise UsageError(f"rotafx: the schedule names {', '.join(unknown)}, which the topology's devices "
                         f"({', '.join(topo.devices)}) do not have; name links and devices as the topology does")
    prof = _profile(args)
    plan = plan_horizon(prof, topo, sched, objective=args.objective, aggregate=args.aggregate,
                        codec=args.codec, memory_rule=args.memory_rule, time_limit=args.time_limit)
    print(plan.report())
    sim = simulate(plan, rate_per_s=args.rate, seed=args.seed, max_wait_s=args.max_wait, schedule=sched)
    print(sim.report())
    if args.plot is not None:
        print(f"wrote {save(day(sim, sched, plan), args.plot)}")
    return 0


def _read_data_file(path: str, what: str) -> Any:
    """A JSON or YAML file's data, or a one-line UsageError that names the file."""
    f = Path(path)
    try:
        text = f.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"rotafx: {what} file {path!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"rotafx: cannot read {what} file {path!r}: {e}") from None
    if f.suffix in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise UsageError(f"rotafx: {what} file {path!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"rotafx: {what} file {path!r} is not valid JSON: {e.msg} at line {e.lineno}, column "
                         f"{e.colno}") from None


def cmd_plot(args: argparse.Namespace) -> int:
    """Draw a plan directory's placement, breakdown or timeline, or a trace's timeline, to a PNG or SVG file."""
    try:
        from .plot import breakdown, placement, save, timeline
        from .plot.trace import plan_figures, trace_timeline
    except ImportError as e:
        raise UsageError(f"rotafx: plotting needs matplotlib: pip install rotafx[plot] ({e})") from None
    from .runtime.tracing import read_trace

    src = Path(args.source)
    out = Path(args.output or f"{args.what}.png")
    if out.suffix.lower() not in (".png", ".svg"):
        raise UsageError(f"rotafx: -o {out}: write a .png or a .svg file")
    if src.is_file():  # a trace
        if args.what != "timeline":
            raise UsageError(f"rotafx: {src} is a file (a trace); only 'timeline' draws a trace, '{args.what}' draws "
                             f"a plan directory")
        fig = trace_timeline(read_trace(src), requests=args.requests)
    elif src.is_dir():
        est, topo, prof = plan_figures(src)
        if args.what == "placement":
            fig = placement(est, topo, prof)
        elif args.what == "breakdown":
            fig = breakdown({src.name: est})
        else:
            fig = timeline(est, requests=args.requests or 4)
    else:
        raise UsageError(f"rotafx: {src} does not exist; give a plan directory (rotafx export) or a trace file "
                         f"(trace='run.json')")
    save(fig, out)
    print(f"wrote {out}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Measure a device, with one progress line per step on stderr, and write the calibration file."""
    from .calibrate import Calibration, CalibrationError, calibrate

    out = Path(args.output)
    if out.suffix not in (".yaml", ".yml", ".json"):
        raise CalibrationError(f"rotafx: -o {out}: unknown suffix {out.suffix!r}; use .yaml, .yml or .json")
    if out.is_dir():
        raise CalibrationError(f"rotafx: -o {out} is a directory; name the file to write")
    dtypes = [d.replace("torch.", "") for d in args.dtypes] if args.dtypes else None
    cal = calibrate(args.device, dtypes=dtypes, threads=args.threads, quick=args.quick, processes=args.processes,
                    compiled=args.compiled, progress=lambda line: print(line, file=sys.stderr, flush=True))
    cal.save(out)
    Calibration.load(out)  # what was written reads back
    dt = next(iter(cal.matmul), "float32")
    rates = [r for r, _ in cal.matmul.get(dt, {}).values()]
    print(f"wrote {out}: {cal.device} with {cal.threads} thread(s); matmul {dt} {min(rates) / 1e9:.1f}-"
          f"{max(rates) / 1e9:.1f} GFLOP/s over {len(rates)} shapes, copy {cal.bandwidth_Bps / 1e9:.1f} GB/s, "
          f"{cal.op_overhead_s * 1e6:.1f} us per op" if rates else f"wrote {out}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one ``rotafx:`` line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        print(f"rotafx: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _positive_int(text: str) -> int:
    """An option's value as an integer >= 1."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return n


def build_parser() -> argparse.ArgumentParser:
    """The ``rotafx`` argument parser (every subcommand)."""
    ap = _Parser(prog="rotafx", description="Profile a model, place its layers on ground and orbital "
                                 "nodes (or any chain of devices), estimate and optimise the cost.")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("profile", help="print the layer table of a model")
    _add_model_args(p)
    p.add_argument("--rows", type=_positive_int, default=None, help="show at most this many layers")
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
    p.add_argument("--time-limit", type=float, default=60.0, help="wall-clock seconds for the whole optimization (default 60)")
    p.set_defaults(func=cmd_optimize)
    p = sub.add_parser("export", help="partition a model and write a plan directory (plan.json + one program per stage)")
    _add_model_args(p)
    _add_topology_args(p)
    p.add_argument("--objective", default="minimize_latency", choices=OBJECTIVES)
    p.add_argument("--solver", default=None, choices=SOLVERS)
    p.add_argument("--time-limit", type=float, default=60.0, help="wall-clock seconds for the whole optimization (default 60)")
    p.add_argument("--path", required=True, help="the plan directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing plan directory")
    p.add_argument("--max-context", type=_positive_int, default=None,
                   help="also write each stage's prefill and decode programs for up to N tokens per sequence")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("serve", help="run one stage of a plan in this process (the driver is rank 0 at MASTER_ADDR:MASTER_PORT)")
    add_serve_args(p)
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("compare", help="run the optimizer's plan in this process: estimate vs measured, per stage")
    _add_model_args(p)
    _add_topology_args(p)
    p.add_argument("--objective", default="minimize_latency", choices=OBJECTIVES)
    p.add_argument("--repeats", type=_positive_int, default=20, help="requests timed (default 20, after 3 warm-up)")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch intra-op threads while timing")
    p.add_argument("--no-emulate", action="store_true", help="do not hold hops back as the topology's links would")
    p.add_argument("--processes", action="store_true",
                   help="run the plan as one process per stage and a driver, as deployed (one request at a time)")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("calibrate", help="measure a device (matmul and attention rates, bandwidth, op and codec costs)")
    p.add_argument("--device", default="cpu", help="torch device to measure (default cpu)")
    p.add_argument("-o", "--output", required=True, help="the calibration file to write (.yaml, .yml or .json)")
    p.add_argument("--dtype", action="append", dest="dtypes", default=None,
                   help="a dtype to measure matmuls and attention in (repeat it; default float32 on CPU)")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="fewer shapes, shorter runs (a few seconds)")
    p.add_argument("--processes", action="store_true",
                   help="also measure a message between two processes over gloo (a link's message_ms)")
    p.add_argument("--compiled", action="store_true",
                   help="also measure the launch cost of inductor-compiled code (the backend with an inner compiler)")
    p.set_defaults(func=cmd_calibrate)
    p = sub.add_parser("simulate", help="plan over a schedule's horizon (orbits, windows, power) and simulate requests")
    _add_model_args(p)
    _add_topology_args(p)
    p.add_argument("--schedule", required=True,
                   help="JSON/YAML: link windows and power, or satellites and stations (see the README)")
    p.add_argument("--objective", default="minimize_latency", choices=OBJECTIVES)
    p.add_argument("--aggregate", default="mean", choices=("mean", "worst"),
                   help="the objective averaged over the served time, or its worst interval")
    p.add_argument("--rate", type=float, default=0.1, help="requests per second, Poisson (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the arrival trace (default 0)")
    p.add_argument("--max-wait", type=float, default=600.0, help="seconds a request waits for a route (default 600)")
    p.add_argument("--time-limit", type=float, default=60.0, help="wall-clock seconds for the horizon's solve")
    p.add_argument("--plot", default=None, metavar="FILE",
                   help="also draw the day (windows, sunlight, routes, batteries, requests) to a .png or .svg")
    p.set_defaults(func=cmd_simulate)
    p = sub.add_parser("plot", help="draw a plan directory's placement, breakdown or timeline, or a trace's timeline")
    p.add_argument("what", choices=("placement", "breakdown", "timeline"))
    p.add_argument("source", help="a plan directory (rotafx export), or for timeline a trace file (trace='run.json')")
    p.add_argument("-o", "--output", default=None, help="the picture to write, .png or .svg (default WHAT.png)")
    p.add_argument("--requests", type=_positive_int, default=None, help="requests to draw on a timeline")
    p.set_defaults(func=cmd_plot)
    p = sub.add_parser("topology", help="describe a topology preset or file")
    p.add_argument("topology", help="preset name or file")
    p.set_defaults(func=cmd_topology)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rotafx`` console script.

    A user error (a bad model path or option, a profile, placement, topology or plan
    rotafx refuses, a file it cannot read) prints one line starting ``rotafx:`` and
    returns 2; a stage that fails while serving returns 3. Any other exception is a bug
    and propagates with its traceback.

    >>> main(["profile", "mlp", "--rows", "0"])  # prints "rotafx: argument --rows: must be a positive integer, ..."
    2
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad command line (2, its line printed): a status, as for any other error
        return e.code if isinstance(e.code, int) else 2
    try:
        return int(args.func(args))
    except _USER_ERRORS as e:
        if not _is_user_error(e):
            raise
        msg = str(e).strip() or type(e).__name__
        print(msg if msg.startswith("rotafx:") else f"rotafx: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rotafx: interrupted", file=sys.stderr)
        return 130


# errors with a message for the user: rotafx's ValueError family (topology, profile, placement, plan, backend,
# infeasible), a missing cost rule under strict, a graph rotafx cannot split, a file that cannot be read or written
_USER_ERRORS = (ValueError, CostRuleError, RewriteError, OSError)


def _is_user_error(e: BaseException) -> bool:
    """A message rotafx wrote for the user, not an exception from deep inside a library (a bug, shown in full)."""
    if isinstance(e, (UsageError, PlanError, InfeasibleError, CostRuleError, RewriteError, OSError)):
        return True
    if type(e).__module__.startswith("rotafx"):
        return True  # TopologyError, ProfileError, PlacementError, BackendError, ...
    frames = traceback.extract_tb(e.__traceback__)
    return bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(_PACKAGE_DIR)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
