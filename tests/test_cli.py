"""The rotafx command: profile, estimate, optimize, topology, and its errors."""

import json
import re
import subprocess
import sys

import pytest

from rotafx import CostTables, ModelProfile, models, preset
from rotafx.cli import main
from rotafx.objective import objective
from rotafx.solve.brute_force import solve_brute_force


def test_profile_prints_the_layer_table(capsys):
    assert main(["profile", "mlp", "--quiet"]) == 0
    out = capsys.readouterr().out
    # the zoo's MLP is Linear(64,128) ReLU Linear(128,128) ReLU Linear(128,10)
    params = 64 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10
    assert f"{params:,} params" in out
    assert "layer" in out and "GFLOPs" in out


def test_profile_accepts_a_python_path(tmp_path, monkeypatch, capsys):
    (tmp_path / "mymodels.py").write_text(
        "import torch\n"
        "def make():\n"
        "    return torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Linear(4, 2))\n")
    monkeypatch.chdir(tmp_path)
    assert main(["profile", "mymodels:make", "--quiet"]) == 0
    assert f"{8 * 4 + 4 + 4 * 2 + 2:,} params" in capsys.readouterr().out


def test_estimate_breakdown_adds_up(capsys):
    assert main(["estimate", "mlp", "--quiet", "--topology", "seed",
                 "--placement", "ground:0-1,orbital:2-3,ground:4", "--by-layer"]) == 0
    out = capsys.readouterr().out
    total = float(out.split(" ms per request")[0].split(":")[-1].replace(",", ""))
    parts = [float(line.split(":")[1].split("ms")[0].replace(",", ""))
             for line in out.splitlines() if line.startswith("  ") and (" compute:" in line or " transfer:" in line
                                                                          or "propagation:" in line)]
    assert total == pytest.approx(sum(parts), abs=0.01 * len(parts))
    assert "uplink" in out and "downlink" in out


def test_estimate_reports_an_invalid_placement(capsys):
    assert main(["estimate", "mlp", "--quiet", "--placement", "ground:0-1,orbital:2,ground:3,orbital:4"]) == 2
    assert "cannot return" in capsys.readouterr().err


def test_optimize_prints_the_brute_force_optimum(capsys):
    """The command's plan is as good as the best of every placement enumerated (seed topology, the zoo's MLP)."""
    assert main(["optimize", "mlp", "--quiet", "--objective", "maximize_throughput"]) == 0
    out = capsys.readouterr().out
    assert "solver milp: optimal" in out
    rps = float(out.split("estimate: ")[1].split(" requests/s")[0].split(", ")[1].replace(",", ""))
    profile = ModelProfile.from_pytorch(models.EXAMPLES["mlp"](), models.example_inputs("mlp", 1))
    best, (period, _) = solve_brute_force(CostTables(profile, preset("seed")), objective("maximize_throughput"))
    assert best is not None
    assert rps == pytest.approx(1e3 / period, rel=1e-6), "the printed throughput is the best placement's"


def test_topology_describes_the_chain(capsys):
    assert main(["topology", "h100x16-l2"]) == 0
    assert "h100_15" in capsys.readouterr().out


def test_bad_topology_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "t.json"
    bad.write_text(json.dumps({"ground_nodes": 1, "orbital_nodes": 1, "ground_flops": 1e12, "orbital_flops": 1e12,
                               "uplink_bandwidth": -5, "downlink_bandwidth": 1e6, "isl_bandwidth": 1e9}))
    assert main(["optimize", "mlp", "--quiet", "--topology", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rotafx:") and "uplink_bandwidth" in err and "-5" in err


def test_console_script_is_installed():
    exe = __import__("shutil").which("rotafx") or str(__import__("pathlib").Path(sys.executable).parent / "rotafx")
    out = subprocess.run([exe, "topology", "seed"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "orbital3" in out.stdout and "uplink 100 Mbps" in out.stdout


def test_unknown_model_names_the_choices(capsys):
    assert main(["profile", "nosuchmodel"]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"rotafx: unknown model 'nosuchmodel'; use a built-in example \((.+)\) or package.module:factory\n",
                        err), err
    assert all(name in err for name in models.EXAMPLES)


def test_python_dash_m_rotafx_is_the_command() -> None:
    out = subprocess.run([sys.executable, "-m", "rotafx", "topology", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("usage: rotafx topology"), out.stderr
    bad = subprocess.run([sys.executable, "-m", "rotafx", "optimize", "--placement"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr


def test_optimize_for_generation_prints_the_brute_force_tpot(capsys):
    """--prompt-len/--new-tokens profile both phases; the plan's TPOT is the best of every placement enumerated."""
    args = ["optimize", "small-gpt", "--quiet", "--prompt-len", "32", "--new-tokens", "8", "--batch-size", "2",
            "--objective", "minimize_tpot"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "generation (32 prompt + 8 new tokens, batch 2" in out
    tpot = float(re.search(r"TPOT ([\d,.]+) ms", out).group(1).replace(",", ""))
    profile = ModelProfile.for_generation(models.EXAMPLES["small-gpt"](), prompt_len=32, new_tokens=8, batch_size=2)
    best, (value, _) = solve_brute_force(CostTables(profile, preset("seed")), objective("minimize_tpot"))
    assert best is not None
    assert tpot == pytest.approx(value, rel=5e-3), "the printed TPOT is the best placement's"


def test_sequences_without_a_generation_workload_is_a_usage_error(capsys):
    assert main(["profile", "small-gpt", "--quiet", "--sequences", "4"]) == 2
    assert "--sequences 4" in capsys.readouterr().err


def test_export_with_max_context_writes_the_generation_programs(tmp_path, capsys):
    assert main(["export", "small-gpt", "--quiet", "--topology", "seed", "--path", str(tmp_path / "p"),
                 "--max-context", "24", "--seq-len", "8"]) == 0
    out = capsys.readouterr().out
    assert "generation: prefill and decode programs per stage, max context 24 tokens" in out
    plan = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert plan["generation"]["max_context"] == 24
