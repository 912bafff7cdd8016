"""rotafx plot: a plan directory's placement, breakdown and timeline and a trace's timeline as PNG/SVG, with
clear errors; Partition.plot()."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

pytest.importorskip("matplotlib")

import rotafx  # noqa: E402
from rotafx.cli import main  # noqa: E402
from rotafx.models import small_gpt  # noqa: E402
from tests.test_export import build, three_stage_topology  # noqa: E402


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "a PNG file"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def plan_dir(tmp_path_factory) -> Path:
    model, x = build("small-gpt")
    d = tmp_path_factory.mktemp("plot") / "plan"
    rotafx.export(model, x, path=d, topology=three_stage_topology(model, x))
    return d


@pytest.mark.parametrize("what", ["placement", "breakdown", "timeline"])
def test_a_plan_directory_draws(plan_dir: Path, tmp_path: Path, what: str, capsys) -> None:
    out = tmp_path / f"{what}.png"
    assert main(["plot", what, str(plan_dir), "-o", str(out)]) == 0
    w, h = _png_size(out)
    assert w > 300 and h > 150
    assert f"wrote {out}" in capsys.readouterr().out


def test_the_placement_of_a_plan_names_its_nodes_and_hops(plan_dir: Path, tmp_path: Path) -> None:
    from rotafx.plot.trace import plan_figures

    est, topo, prof = plan_figures(plan_dir)
    assert main(["plot", "placement", str(plan_dir), "-o", str(tmp_path / "p.svg")]) == 0
    text = "".join(ET.parse(tmp_path / "p.svg").getroot().itertext())
    for node in {topo.chain[s] for s in est.stages}:
        assert node in text
    spec = rotafx.plan.schema.read_plan(plan_dir)
    assert est.total_ms == pytest.approx(spec.estimate["total_ms"]) and prof.num_layers == len(est.by_layer)


def test_a_trace_draws_its_tracks(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = small_gpt().eval()
    x = torch.randint(0, 256, (2, 16))
    pm = rotafx.partition(m, (x,), trace=tmp_path / "run.json")
    pm(x)
    pm(x)
    pm.trace(None)
    assert main(["plot", "timeline", str(tmp_path / "run.json"), "-o", str(tmp_path / "t.svg")]) == 0
    root = ET.parse(tmp_path / "t.svg").getroot()
    text = "".join(root.itertext())
    assert "requests" in text and any(f"stage {st.index}: {st.node}" in text for st in pm.stages)
    bars = [e for e in root.iter() if (e.get("id") or "").startswith(("measured:", "estimate:"))]
    assert {b.get("id").split(":")[0] for b in bars} == {"measured", "estimate"}


def test_bad_plot_commands_say_what_to_give(plan_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(["plot", "placement", str(plan_dir), "-o", str(tmp_path / "x.jpg")]) == 2
    assert "write a .png or a .svg file" in capsys.readouterr().err
    assert main(["plot", "placement", str(tmp_path / "nowhere")]) == 2
    assert "does not exist; give a plan directory" in capsys.readouterr().err
    (tmp_path / "run.json").write_text('{"traceEvents": []}')
    assert main(["plot", "breakdown", str(tmp_path / "run.json")]) == 2
    assert "only 'timeline' draws a trace" in capsys.readouterr().err
    assert main(["plot", "timeline", str(tmp_path / "run.json"), "-o", str(tmp_path / "t.png")]) == 2
    assert "the trace has no spans to draw" in capsys.readouterr().err


def test_a_partition_draws_itself() -> None:
    from rotafx.plot import placement_data

    prof = rotafx.ModelProfile.from_pytorch(small_gpt().eval(), (torch.randint(0, 256, (1, 16)),))
    part = rotafx.PartitionOptimizer(solver="dp").optimize(prof, "seed")
    fig = part.plot()
    assert type(fig).__name__ == "Figure"
    text = [t.get_text() for ax in fig.axes for t in ax.texts]
    busy = [n for n in placement_data(part).nodes if not n.empty]
    assert any(busy[0].node in t for t in text)
