"""Measured device figures: what a device achieves, timed with torch's own ops, saved as a file a topology can name.

:func:`calibrate` times, on one torch device and with the threads it will run with:

* matmuls over a grid of shapes ``(M, K, N)`` per dtype: achieved FLOP/s (``2·M·K·N`` per call);
* attention (``scaled_dot_product_attention``) over ``(batch·heads, sequence, head dim)``:
  achieved FLOP/s counted as the profile counts it (``4·BH·S²·D``, causal or not);
* memory bandwidth by working-set size (copies into a buffer made once, 256 kB to 64 MB:
  bytes read + written per second; an op is priced at the bandwidth of its own size);
* the fixed cost of launching one op and one view, eager, as a model pays it: the larger of
  a chain of small ops and a net of tiny layers (module calls included) spread over the ops
  the profiler counts in it;
* each codec's encode and decode time per input byte;
* for each other device of the host (``cpu`` and ``cuda:i``), transfer latency and bandwidth.

Each figure is the median of ``torch.utils.benchmark``'s blocked runs, with its spread
(inter-quartile range over the median). :class:`Calibration` looks figures up (matmul
rates interpolated in log-space between measured shapes, clamped at the grid's edges) and
reads and writes JSON or YAML with the machine it came from. A calibration file is input
from others: every field is checked (finite, positive, the right shape) when read.
"""

from __future__ import annotations

import bisect
import datetime
import json
import math
import os
import platform
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from .units import first_line

__all__ = ["Calibration", "CalibrationError", "calibrate", "MATMUL_M", "MATMUL_KN"]

FORMAT = "rotafx-calibration"
VERSION = 1
MATMUL_M = (1, 4, 16, 64, 256, 1024)
MATMUL_KN = (64, 256, 1024, 4096)
ATTENTION_BH = (8, 32)
ATTENTION_S = (16, 64, 256, 1024)
ATTENTION_D = (64, 128)


class CalibrationError(ValueError):
    """A calibration file or option that cannot be used; the message names the file, the field and the value."""


def _rate_key(m: int, k: int, n: int) -> tuple[float, float, float]:
    return math.log2(m), math.log2(k), math.log2(n)


@dataclass
class Calibration:
    """What one device achieves, measured. Rates in FLOP/s, bandwidths in bytes/s, times in seconds.

    ``matmul[dtype]`` and ``attention[dtype]`` map a shape to ``(rate, spread)``;
    ``transfers["cpu->cuda:0"]`` is ``{"latency_s", "bandwidth_Bps"}``; ``codecs[name]`` is
    ``{"encode_s_per_byte", "decode_s_per_byte"}``.
    """

    device: str
    threads: int
    matmul: dict[str, dict[tuple[int, int, int], tuple[float, float]]] = field(default_factory=dict)
    attention: dict[str, dict[tuple[int, int, int], tuple[float, float]]] = field(default_factory=dict)
    bandwidth_Bps: float = 0.0
    bandwidth: dict[int, float] = field(default_factory=dict)  # bytes copied -> bytes/s (read + written)
    op_overhead_s: float = 0.0
    view_overhead_s: float = 0.0
    codecs: dict[str, dict[str, float]] = field(default_factory=dict)
    transfers: dict[str, dict[str, float]] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    source: str = "measured"

    # -- lookups ------------------------------------------------------------------------------
    def matmul_flops(self, m: int, k: int, n: int, dtype: str = "float32") -> float | None:
        """Achieved FLOP/s of an ``(m, k) @ (k, n)`` matmul: trilinear in log2 of each size between the
        measured shapes, clamped at the grid's edges; None when ``dtype`` was not measured."""
        return _interpolate(self.matmul.get(dtype), (m, k, n))

    def attention_flops(self, batch_heads: int, seq: int, head_dim: int, dtype: str = "float32") -> float | None:
        """Achieved FLOP/s of attention at that size (the profile's FLOP count per second); None if not measured."""
        return _interpolate(self.attention.get(dtype), (batch_heads, seq, head_dim))

    def bandwidth_at(self, nbytes: float) -> float:
        """Bytes/s an op moving ``nbytes`` achieves: log-linear between the measured copy sizes, clamped at their
        ends (small working sets run from cache); ``bandwidth_Bps`` when no table was measured."""
        if not self.bandwidth:
            return self.bandwidth_Bps
        return math.exp(sum(w * math.log(self.bandwidth[s]) for s, w in _bracket(sorted(self.bandwidth), nbytes)))

    def peak_flops(self, dtype: str = "float32") -> float | None:
        """The best measured matmul rate for ``dtype`` (the compute roof of ops with no kernel of their own)."""
        rows = self.matmul.get(dtype)
        return max(r for r, _ in rows.values()) if rows else None

    def op_time_s(self, op: Any, dtype: str = "float32") -> float:
        """One op's time: its launch cost, plus its work.

        ``op`` is a :class:`~rotafx.layers.OpCost`. A view costs the view's launch only. An op
        whose kernel (a matmul or attention) has a calibrated rate costs ``flops / rate``
        (that rate was measured with its operands' traffic in it); any other op
        ``max(flops / best matmul rate, bytes_moved / bandwidth at that many bytes)``. The
        dtype's tables, else float32's.
        """
        if op.view:
            return self.view_overhead_s
        table = self._table(self.matmul, dtype)
        if op.kernel is not None:
            kind, a, b, c = op.kernel
            rate = self.matmul_flops(a, b, c, table) if kind == "mm" else \
                self.attention_flops(a, b, c, self._table(self.attention, dtype))
            if rate:
                return self.op_overhead_s + op.flops / rate
        peak = self.peak_flops(table)
        compute = op.flops / peak if peak else 0.0
        memory = op.bytes_moved / self.bandwidth_at(op.bytes_moved) if op.bytes_moved else 0.0
        return self.op_overhead_s + max(compute, memory)

    @staticmethod
    def _table(tables: Mapping[str, Any], dtype: str) -> str:
        """The table for ``dtype``: its own, else float32's, else any measured one."""
        if dtype in tables:
            return dtype
        return "float32" if "float32" in tables else next(iter(tables), dtype)

    def layer_time_s(self, layer: Any, dtype: str = "float32") -> float:
        """A layer's time on this device: the sum of its ops' :meth:`op_time_s` (a layer with no op
        records, e.g. from ``from_layers``, as one op per entry of its ``work``)."""
        from .layers import OpCost

        ops = layer.op_costs or tuple(OpCost(f, b, None, False) for f, b in (layer.work or ((layer.flops, layer.bytes_moved),)))
        return sum(self.op_time_s(op, dtype) for op in ops)

    def codec_s(self, codec: str, nbytes: float) -> float:
        """Seconds to encode ``nbytes`` of activations with ``codec`` and decode them (0 when not measured)."""
        c = self.codecs.get(codec)
        return 0.0 if c is None else nbytes * (c["encode_s_per_byte"] + c["decode_s_per_byte"])

    # -- files ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        def table(t: Mapping[str, Mapping[tuple[int, int, int], tuple[float, float]]]) -> dict[str, list[list[float]]]:
            return {dt: [[*shape, rate, spread] for shape, (rate, spread) in sorted(rows.items())] for dt, rows in t.items()}
        return {"format": FORMAT, "version": VERSION, "device": self.device, "threads": self.threads,
                "source": self.source, "machine": dict(self.machine),
                "bandwidth_Bps": self.bandwidth_Bps,
                "bandwidth": [[n, bps] for n, bps in sorted(self.bandwidth.items())],
                "op_overhead_s": self.op_overhead_s,
                "view_overhead_s": self.view_overhead_s,
                "matmul": table(self.matmul), "attention": table(self.attention),
                "codecs": {k: dict(v) for k, v in self.codecs.items()},
                "transfers": {k: dict(v) for k, v in self.transfers.items()}}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write JSON (``.json``) or YAML (``.yaml``/``.yml``); returns the path."""
        p = Path(path)
        data = self.to_dict()
        if p.suffix in (".yaml", ".yml"):
            import yaml

            text = yaml.safe_dump(data, sort_keys=False)
        elif p.suffix == ".json":
            text = json.dumps(data, indent=1)
        else:
            raise CalibrationError(f"rotafx: calibration file {p}: unknown suffix {p.suffix!r}; use .json, .yaml or .yml")
        tmp = p.with_name(f".{p.name}.tmp")
        tmp.write_text(text)
        tmp.replace(p)
        return p

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Calibration":
        """Read a calibration file (JSON or YAML), checking every field; :class:`CalibrationError` names what is wrong."""
        p = Path(path)
        where = f"rotafx: calibration file {p}"
        if p.is_dir():
            raise CalibrationError(f"{where} is a directory; give the file `rotafx calibrate -o FILE` wrote")
        try:
            raw = p.read_bytes()
        except OSError as e:
            raise CalibrationError(f"{where}: cannot read it ({e.strerror}); make one with `rotafx calibrate -o {p}`") from None
        if len(raw) > 16 << 20:
            raise CalibrationError(f"{where} is {len(raw)} bytes; a calibration is a few kB")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise CalibrationError(f"{where} is not text (not UTF-8); give the JSON or YAML file rotafx wrote") from None
        try:
            if p.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except RecursionError:
            raise CalibrationError(f"{where} is nested too deeply to be a calibration") from None
        except Exception as e:  # noqa: BLE001 - json and yaml errors: name the file and where
            first = first_line(e)
            raise CalibrationError(f"{where} is not valid {'YAML' if p.suffix in ('.yaml', '.yml') else 'JSON'}: "
                                   f"{first}") from None
        return cls.from_dict(data, where=where)

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "rotafx: calibration") -> "Calibration":
        """A calibration from :meth:`to_dict`'s form, every field checked."""
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise CalibrationError(f"{where}: not a rotafx calibration (expected \"format\": \"{FORMAT}\")")
        if data.get("version") != VERSION:
            raise CalibrationError(f"{where}: version {data.get('version')!r}; this rotafx reads version {VERSION}")

        def num(name: str, v: Any, positive: bool = True) -> float:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or \
                    (positive and v == 0):
                raise CalibrationError(f"{where}: {name} must be a finite number {'> 0' if positive else '>= 0'}, "
                                       f"got {v!r}")
            return float(v)

        def table(name: str) -> dict[str, dict[tuple[int, int, int], tuple[float, float]]]:
            t = data.get(name, {})
            if not isinstance(t, Mapping):
                raise CalibrationError(f"{where}: {name} must map a dtype to rows, got {type(t).__name__}")
            out: dict[str, dict[tuple[int, int, int], tuple[float, float]]] = {}
            for dt, rows in t.items():
                if not isinstance(rows, list):
                    raise CalibrationError(f"{where}: {name}[{dt!r}] must be a list of rows")
                out[str(dt)] = {}
                for i, row in enumerate(rows):
                    if not isinstance(row, list) or len(row) != 5:
                        raise CalibrationError(f"{where}: {name}[{dt!r}][{i}] must be [a, b, c, rate, spread], got {row!r}")
                    dims = row[:3]
                    if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
                        raise CalibrationError(f"{where}: {name}[{dt!r}][{i}]: sizes must be positive integers, "
                                               f"got {dims!r}")
                    out[str(dt)][(dims[0], dims[1], dims[2])] = (num(f"{name}[{dt!r}][{i}] rate", row[3]),
                                                                 num(f"{name}[{dt!r}][{i}] spread", row[4], False))
            return out

        def nested(name: str, fields: Sequence[str]) -> dict[str, dict[str, float]]:
            t = data.get(name, {})
            if not isinstance(t, Mapping):
                raise CalibrationError(f"{where}: {name} must be a mapping, got {type(t).__name__}")
            out = {}
            for k, v in t.items():
                if not isinstance(v, Mapping) or set(fields) - set(v):
                    raise CalibrationError(f"{where}: {name}[{k!r}] needs {list(fields)}")
                out[str(k)] = {f: num(f"{name}[{k!r}].{f}", v[f], False) for f in fields}
            return out

        device = data.get("device")
        if not isinstance(device, str) or not device:
            raise CalibrationError(f"{where}: device must be a torch device name, got {device!r}")
        threads = data.get("threads")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise CalibrationError(f"{where}: threads must be a positive integer, got {threads!r}")
        machine = data.get("machine", {})
        bw_rows = data.get("bandwidth", [])
        if not isinstance(bw_rows, list):
            raise CalibrationError(f"{where}: bandwidth must be a list of [bytes, bytes per second] rows")
        bandwidth: dict[int, float] = {}
        for i, row in enumerate(bw_rows):
            if not isinstance(row, list) or len(row) != 2 or isinstance(row[0], bool) or not isinstance(row[0], int) \
                    or row[0] < 1:
                raise CalibrationError(f"{where}: bandwidth[{i}] must be [bytes (a positive integer), bytes per second], "
                                       f"got {row!r}")
            bandwidth[row[0]] = num(f"bandwidth[{i}] rate", row[1])
        return cls(bandwidth=bandwidth, device=device, threads=threads, matmul=table("matmul"), attention=table("attention"),
                   bandwidth_Bps=num("bandwidth_Bps", data.get("bandwidth_Bps")),
                   op_overhead_s=num("op_overhead_s", data.get("op_overhead_s"), False),
                   view_overhead_s=num("view_overhead_s", data.get("view_overhead_s"), False),
                   codecs=nested("codecs", ("encode_s_per_byte", "decode_s_per_byte")),
                   transfers=nested("transfers", ("latency_s", "bandwidth_Bps")),
                   machine=dict(machine) if isinstance(machine, Mapping) else {},
                   source=str(data.get("source", "measured")))


def _bracket(grid: Sequence[int], x: float) -> list[tuple[int, float]]:
    """The grid values around ``x`` with their weights, linear in log(x); clamped at the grid's ends."""
    x = min(max(x, grid[0]), grid[-1])
    j = bisect.bisect_left(grid, x)
    if grid[j] == x or j == 0:
        return [(grid[j], 1.0)]
    lo, hi = grid[j - 1], grid[j]
    w = (math.log(x) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return [(lo, 1.0 - w), (hi, w)]


def _interpolate(rows: Mapping[tuple[int, int, int], tuple[float, float]] | None, at: tuple[int, int, int]) -> float | None:
    """Trilinear interpolation in log2 of the sizes over the measured grid; missing corners are skipped."""
    if not rows:
        return None
    corners = [_bracket(sorted({k[i] for k in rows}), at[i]) for i in range(3)]  # per axis: (grid value, weight)
    total = weight = 0.0
    for a, wa in corners[0]:
        for b, wb in corners[1]:
            for c, wc in corners[2]:
                if (a, b, c) in rows:
                    total += wa * wb * wc * math.log(rows[(a, b, c)][0])
                    weight += wa * wb * wc
    if weight == 0.0:  # no measured corner around it (a shape past the measured budget): the nearest one
        key = min(rows, key=lambda k: sum((a - b) ** 2 for a, b in zip(_rate_key(*k), _rate_key(*at))))
        return rows[key][0]
    return math.exp(total / weight)


# -- measuring ------------------------------------------------------------------------------------


def _timer(fn: Callable[[], Any], threads: int, min_run_time: float) -> tuple[float, float]:
    """Median seconds per call of ``fn`` and its spread (IQR / median), by torch.utils.benchmark."""
    from torch.utils.benchmark import Timer

    fn()  # warm-up
    m = Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads).blocked_autorange(min_run_time=min_run_time)
    return float(m.median), float(m.iqr / m.median) if m.median > 0 else 0.0


def _machine(device: torch.device, threads: int) -> dict[str, Any]:
    info: dict[str, Any] = {"host": socket.gethostname(), "platform": platform.platform(), "python": sys.version.split()[0],
                            "torch": str(torch.__version__), "threads": threads, "cpu_count": os.cpu_count(),
                            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def calibrate(device: str | torch.device = "cpu", *, dtypes: Sequence[str] | None = None, threads: int | None = None,
              quick: bool = False, flop_budget: float | None = None,
              progress: Callable[[str], None] | None = None) -> Calibration:
    """Measure ``device``; a :class:`Calibration` (save it with ``.save("cpu.yaml")``).

    ``dtypes``: the matmul and attention dtypes to measure (default float32 on CPU; float16,
    bfloat16 and float32 on CUDA). ``threads``: torch intra-op threads while timing (default
    the current setting: calibrate with the threads you deploy with). ``quick``: fewer
    shapes and shorter runs (a few seconds; for tests and a first look). ``flop_budget``:
    shapes whose one call exceeds this many FLOPs are skipped (default 2e9 on CPU, 1e13 on
    CUDA; lookups beyond use the nearest measured shape). ``progress`` receives one line per
    step (the CLI prints them to stderr).
    """
    from .devices import existing_device

    dev = existing_device(device, "device", CalibrationError)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise CalibrationError(f"rotafx: threads must be a positive integer, got {threads!r}")
    threads = threads or torch.get_num_threads()
    if dtypes is None:
        dtypes = ("float16", "bfloat16", "float32") if dev.type == "cuda" else ("float32",)
    bad = [d for d in dtypes if not isinstance(d, str) or not isinstance(getattr(torch, d, None), torch.dtype)]
    if bad:
        raise CalibrationError(f"rotafx: dtypes {bad!r} are not torch dtypes; use names such as 'float32', 'float16'")
    budget = flop_budget if flop_budget is not None else (1e13 if dev.type == "cuda" else 2e9)
    run = 0.02 if quick else 0.1
    say = progress or (lambda _msg: None)
    cal = Calibration(device=str(dev), threads=threads, machine=_machine(dev, threads))
    ms = MATMUL_M[::2] if quick else MATMUL_M
    kns = MATMUL_KN[1::2] if quick else MATMUL_KN
    with torch.no_grad():
        for dt in dtypes:
            dtype = getattr(torch, dt)
            shapes = [(m, k, n) for m in ms for k in kns for n in kns if 2 * m * k * n <= budget]
            cal.matmul[dt] = {}
            for i, (m, k, n) in enumerate(shapes):
                a, b = torch.randn(m, k, device=dev).to(dtype), torch.randn(k, n, device=dev).to(dtype)
                t, spread = _timer(lambda: torch.mm(a, b), threads, run)
                cal.matmul[dt][(m, k, n)] = (2 * m * k * n / t, spread)
                say(f"calibrate {dev}: matmul {dt} {i + 1}/{len(shapes)} ({m}x{k}x{n}: {2 * m * k * n / t / 1e9:.1f} "
                    f"GFLOP/s)")
            cal.attention[dt] = {}
            sizes = [(bh, s, d) for bh in ATTENTION_BH[:1 if quick else None] for s in ATTENTION_S[:3 if quick else None]
                     for d in ATTENTION_D[:1 if quick else None] if 4 * bh * s * s * d <= budget]
            for i, (bh, s, d) in enumerate(sizes):
                q = torch.randn(1, bh, s, d, device=dev).to(dtype)
                flops = 4 * bh * s * s * d
                t, spread = _timer(lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True),
                                   threads, run)
                cal.attention[dt][(bh, s, d)] = (flops / t, spread)
                say(f"calibrate {dev}: attention {dt} {i + 1}/{len(sizes)} (BH {bh}, S {s}, D {d}: "
                    f"{flops / t / 1e9:.1f} GFLOP/s)")
        # copies into a buffer made once (a fresh allocation would time page faults), by working-set size
        for log2 in ((16, 20, 22, 24) if quick else (16, 18, 20, 22, 24)):  # 256 kB .. 64 MB of float32
            src = torch.randn(1 << log2, device=dev)
            dst = torch.empty_like(src)
            t, _ = _timer(lambda: dst.copy_(src), threads, run)
            nbytes = 2 * src.numel() * src.element_size()
            cal.bandwidth[nbytes] = nbytes / t
        cal.bandwidth_Bps = cal.bandwidth[max(cal.bandwidth)]
        say(f"calibrate {dev}: copy bandwidth {min(cal.bandwidth.values()) / 1e9:.1f}-"
            f"{max(cal.bandwidth.values()) / 1e9:.1f} GB/s ({len(cal.bandwidth)} sizes)")
        # the launch cost of an op as models pay it: a chain of different small ops (and of views)
        a, b, idx = torch.randn(4, 8, device=dev), torch.randn(4, 8, device=dev), torch.tensor([0, 2], device=dev)

        def ops() -> Any:
            x = torch.add(a, b)
            x = torch.mul(x, b)
            x = torch.relu(x)
            x = torch.tanh(x)
            x = torch.neg(x)
            y = x.sum(-1, keepdim=True)
            x = torch.sub(x, y)
            x = x[idx]
            x = torch.cat([x, x])
            return x.clone()

        def views() -> Any:
            x = a.view(8, 4)
            x = x.transpose(0, 1)
            x = x.unsqueeze(0)
            x = x.squeeze(0)
            x = x.expand(4, 8)
            return x.narrow(0, 0, 2)

        t_ops, _ = _timer(ops, threads, run)
        t_views, _ = _timer(views, threads, run)
        cal.op_overhead_s, cal.view_overhead_s = t_ops / 10, t_views / 6
        # and as a model's forward pays it, module calls included: a small net of tiny layers (no arithmetic to
        # speak of), its time spread over the ops the profiler counts in it
        net = _launch_probe().to(dev).eval()
        x = torch.randn(4, 16, device=dev)
        t_net, _ = _timer(lambda: net(x), threads, run)
        from .profile import ModelProfile

        prof = ModelProfile.from_pytorch(net, (x.to("cpu"),) if dev.type != "cpu" else (x,))
        costs = [c for layer in prof.layers for c in layer.op_costs]
        n_views = sum(1 for c in costs if c.view)
        n_ops = max(1, len(costs) - n_views)
        cal.op_overhead_s = max(cal.op_overhead_s, (t_net - n_views * cal.view_overhead_s) / n_ops)
        say(f"calibrate {dev}: {cal.op_overhead_s * 1e6:.1f} us per op, {cal.view_overhead_s * 1e6:.1f} us per view")
        from .wire import CODECS, decode, encode

        x = torch.randn(1 << (18 if quick else 20), device=dev)
        nbytes = x.numel() * x.element_size()
        for codec in CODECS:
            payload, scale = encode(x, codec)
            te, _ = _timer(lambda: encode(x, codec), threads, run)
            td, _ = _timer(lambda: decode(payload, scale, x, dev), threads, run)
            cal.codecs[codec] = {"encode_s_per_byte": te / nbytes, "decode_s_per_byte": td / nbytes}
            say(f"calibrate {dev}: codec {codec}: encode {nbytes / te / 1e9:.2f} GB/s, decode {nbytes / td / 1e9:.2f} GB/s")
        for other in _other_devices(dev):
            tiny, chunk = torch.ones(1, device=dev), torch.randn(1 << 22, device=dev)
            lat, _ = _timer(lambda: tiny.to(other), threads, run)
            tb, _ = _timer(lambda: chunk.to(other), threads, run)
            cal.transfers[f"{dev}->{other}"] = {"latency_s": lat,
                                                "bandwidth_Bps": chunk.numel() * chunk.element_size() / max(tb - lat, 1e-9)}
            say(f"calibrate {dev}: to {other}: {lat * 1e6:.1f} us, "
                f"{cal.transfers[f'{dev}->{other}']['bandwidth_Bps'] / 1e9:.1f} GB/s")
    return cal


def _launch_probe() -> torch.nn.Module:
    """Eight tiny blocks (linear, layer norm, GELU, a residual add): what a model's forward does, at no size."""
    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.norm = torch.nn.Linear(16, 16), torch.nn.LayerNorm(16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.nn.functional.gelu(self.norm(self.fc(x)))

    torch.manual_seed(0)
    return torch.nn.Sequential(*(Block() for _ in range(8)))


def _other_devices(dev: torch.device) -> Iterable[torch.device]:
    if dev.type != "cpu":
        yield torch.device("cpu")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            if torch.device("cuda", i) != dev:
                yield torch.device("cuda", i)
