"""rotafx::transfer between the devices of this machine, measured, against the cost model's estimate.

For every ordered pair of devices here (``cpu`` and each ``cuda:i``; without CUDA only
``cpu -> cpu``), activation sizes from 64 KiB to 16 MiB (fp32; --max-mib) and each codec: the median
time of ``rotafx.ops.transfer(x, dst, codec)`` (CUDA synchronised before the clock is
read), and the cost model's time for the link, ``latency + wire bytes * 8 / bandwidth``
(``rotafx.costmodel.transfer_ms`` on the bytes ``rotafx.wire.wire_bytes`` says the codec sends).

The link's bandwidth and latency are what a topology file would declare. By default they
are fitted (least squares of the relative error) to the uncompressed measurements of that pair, and printed, so
that they can be copied into a topology; ``--bandwidth-gbps`` and ``--latency-us`` declare
them instead (a data-sheet figure, e.g. 512 for PCIe 5.0 x16). With a fitted link the
uncompressed rows test the model's form (a fixed cost plus a linear one); the codec rows
test what it leaves out: the model prices a codec by its smaller wire bytes only, while
the measurement includes encoding and decoding.

    .venv/bin/python benchmarks/transfers.py [--repeats 30] [--max-mib 16] [--out ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rotafx.costmodel import transfer_ms
from rotafx.wire import wire_bytes
from rotafx.ops import transfer
from rotafx.layers import TensorInfo
from rotafx.topology import Link

HERE = Path(__file__).resolve().parent
CODEC_NAMES = (None, "fp16", "bf16", "int8")


def devices() -> list[torch.device]:
    return [torch.device("cpu")] + [torch.device("cuda", i) for i in range(torch.cuda.device_count())]


def sync(*devs: torch.device) -> None:
    for d in devs:
        if d.type == "cuda":
            torch.cuda.synchronize(d)


def median_ms(x: torch.Tensor, dst: torch.device, codec: str | None, repeats: int) -> float:
    """Median over ``repeats`` calls (after 3 warm-up calls) of one synchronised transfer."""
    times = []
    for r in range(repeats + 3):
        sync(x.device, dst)
        t0 = time.perf_counter()
        transfer(x, dst, codec)
        sync(x.device, dst)
        if r >= 3:
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def fit_link(src: str, dst: str, sizes: list[int], ms: list[float]) -> Link:
    """The link (latency, bandwidth) whose model best fits ``ms`` over ``sizes`` bytes (least squares of
    the relative error, so that the small sizes count as much as the large)."""
    x, y = np.array(sizes, float), np.array(ms, float)
    w = 1.0 / y
    slope, intercept = np.polyfit(x, y, 1, w=w)
    if intercept < 0:  # a latency cannot be negative: fit the line through the origin instead
        slope, intercept = float(np.sum(w * w * x * y) / np.sum(w * w * x * x)), 0.0
    bandwidth_bps = 8.0 / (slope * 1e-3) if slope > 0 else float("inf")
    return Link(src, dst, bandwidth_bps=bandwidth_bps, latency_ms=float(intercept))


def estimate_ms(t: TensorInfo, codec: str | None, link: Link) -> float:
    return link.latency_ms + transfer_ms(wire_bytes(t.numel, t.itemsize, t.floating, codec), link)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--max-mib", type=int, default=16, help="largest activation, MiB of fp32")
    ap.add_argument("--bandwidth-gbps", type=float, help="declare every link's bandwidth (Gbit/s) instead of fitting it")
    ap.add_argument("--latency-us", type=float, default=None, help="declare every link's latency (µs); with --bandwidth-gbps")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="default: benchmarks/RESULTS_transfers.md (CPU only) or "
                                                 "RESULTS_transfers_cuda.md")
    args = ap.parse_args()
    if args.max_mib < 1:
        ap.error(f"--max-mib {args.max_mib}: give at least 1, so that there are sizes to fit a link to")
    if args.latency_us is not None and not args.bandwidth_gbps:
        ap.error("--latency-us declares a link together with --bandwidth-gbps; give both, or neither to fit them")
    torch.set_num_threads(args.threads)
    devs = devices()
    sizes = [64 * 1024 * 4**k for k in range(12) if 64 * 1024 * 4**k <= args.max_mib * 2**20]
    pairs = [(a, b) for a in devs for b in devs if a != b] or [(devs[0], devs[0])]
    rows = []
    links = {}
    for src, dst in pairs:
        gen = torch.Generator(device=src).manual_seed(0)
        measured: dict[tuple[int, str | None], float] = {}
        for nbytes in sizes:
            x = torch.randn(nbytes // 4 // 256, 256, device=src, generator=gen)
            for codec in CODEC_NAMES:
                measured[nbytes, codec] = median_ms(x, dst, codec, args.repeats)
            print(f"{src} -> {dst} {nbytes / 2**20:8.3f} MiB: "
                  + ", ".join(f"{c or 'none'} {measured[nbytes, c]:.3f} ms" for c in CODEC_NAMES), flush=True)
        if args.bandwidth_gbps:
            link = Link(str(src), str(dst), bandwidth_bps=args.bandwidth_gbps * 1e9, latency_ms=(args.latency_us or 0) / 1e3)
        else:
            link = fit_link(str(src), str(dst), sizes, [measured[n, None] for n in sizes])
        links[src, dst] = link
        for nbytes in sizes:
            t = TensorInfo("x", nbytes // 4, 4, True)
            for codec in CODEC_NAMES:
                est = estimate_ms(t, codec, link)
                rows.append((str(src), str(dst), nbytes, codec, measured[nbytes, codec], est))
    write(args, rows, links)


def write(args: argparse.Namespace, rows: list[tuple], links: dict) -> None:
    cuda = torch.cuda.is_available()
    out = Path(args.out) if args.out else HERE / ("RESULTS_transfers_cuda.md" if cuda else "RESULTS_transfers.md")
    gpus = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) if cuda else "no GPU"
    how = (f"declared: {args.bandwidth_gbps} Gbit/s, {args.latency_us or 0} µs" if args.bandwidth_gbps
           else "fitted to the uncompressed rows of each pair (least squares of the relative error)")
    lines = ["# rotafx::transfer: measured against the cost model", "",
             f"Median of {args.repeats} synchronised calls of `rotafx.ops.transfer` per row (fp32 activations, 256 "
             f"per row), against `latency + wire bytes * 8 / bandwidth` with each link {how}. The model prices a "
             "codec by its wire bytes only; the measured time includes encoding and decoding.", "",
             "| link | latency µs | bandwidth Gbit/s |", "|---|---:|---:|"]
    for (src, dst), link in links.items():
        lines.append(f"| {src} -> {dst} | {link.latency_ms * 1e3:.1f} | {link.bandwidth_bps / 1e9:.1f} |")
    lines += ["", "| link | activation | codec | measured ms | estimate ms | measured / estimate |",
              "|---|---:|---|---:|---:|---:|"]
    for src, dst, nbytes, codec, ms, est in rows:
        size = f"{nbytes / 2**20:g} MiB" if nbytes >= 2**20 else f"{nbytes // 1024} KiB"
        ratio = f"{ms / est:.2f}" if est > 0 else "-"
        lines.append(f"| {src} -> {dst} | {size} | {codec or 'none'} | {ms:.4f} | {est:.4f} | {ratio} |")
    ratios = {c: [r[4] / r[5] for r in rows if r[3] == c and r[5] > 0] or [float("nan")] for c in CODEC_NAMES}
    worst = {c: max(v) for c, v in ratios.items()}
    best = {c: min(v) for c, v in ratios.items()}
    lines += ["", "Measured over estimated, smallest to largest, by codec: "
              + "; ".join(f"{c or 'none'} {best[c]:.2f}-{worst[c]:.2f}" for c in CODEC_NAMES) + ".", "",
              f"Command: `.venv/bin/python benchmarks/transfers.py --repeats {args.repeats} --max-mib {args.max_mib}"
              + (f" --bandwidth-gbps {args.bandwidth_gbps}" if args.bandwidth_gbps else "")
              + (f" --latency-us {args.latency_us}" if args.latency_us is not None else "") + "`", "",
              f"Machine: {platform.machine()}, {os.cpu_count()} logical CPUs, {gpus}; torch {torch.__version__}, "
              f"Python {sys.version.split()[0]}, torch threads {torch.get_num_threads()}.", ""]
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
