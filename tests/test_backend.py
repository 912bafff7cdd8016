"""The rotastellar backend, rotafx.partition and @rotafx.partitioned: outputs equal eager on a zoo of models."""

from __future__ import annotations

import importlib.metadata
import logging
import pickle
from typing import Any, Callable

import warnings

import pytest
import torch
import torch.nn as nn

import rotafx
from rotafx.backend import BackendError, RotaStellarBackend, rotastellar
from rotafx import InfeasibleError
from tests.models import ZOO

CHAIN = ["cpu0", "cpu1", "cpu2"]
ON_CPU = {n: "cpu" for n in CHAIN}


def three_cpus(memory: float) -> dict[str, Any]:
    """A chain of three identical 'cpu' nodes with ``memory`` bytes each."""
    return {
        "devices": [{"name": n, "flops": 1e12, "memory": int(memory), "memory_bandwidth": 1e11} for n in CHAIN],
        "links": [{"src": a, "dst": b, "bandwidth": 1e10, "latency_ms": 0.01} for a, b in zip(CHAIN, CHAIN[1:])],
        "chain": CHAIN,
    }


_TIGHT: dict[int, dict[str, Any]] = {}


def tight_topology(model: nn.Module, inputs: tuple) -> dict[str, Any]:
    """Cached per model class and input shapes: see :func:`_tight_topology`."""
    key = hash((type(model).__qualname__, sum(p.numel() for p in model.parameters()),
                tuple(tuple(t.shape) for t in inputs)))
    if key not in _TIGHT:
        _TIGHT[key] = _tight_topology(model, inputs)
    return _TIGHT[key]


def _tight_topology(model: nn.Module, inputs: tuple) -> dict[str, Any]:
    """Three cpu nodes, each just big enough (+5%, at most 99% of the whole) that the model must be cut."""
    prof = rotafx.ModelProfile.from_pytorch(model, inputs)
    need = prof.weight_bytes + max(l.peak_bytes for l in prof.layers)
    opt = rotafx.PartitionOptimizer(solver="dp")
    for pct in range(34, 100, 2):
        try:
            opt.optimize(prof, three_cpus(need * pct / 100))
        except InfeasibleError:
            continue
        return three_cpus(min(need * pct / 100 * 1.05, need * 0.99))
    raise AssertionError("no memory below the whole model's fits: the test cannot force a cut")


def gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=64, use_cache=False,
                     bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


class GraphBreak(nn.Module):
    """Two halves with ``torch._dynamo.graph_break()`` between them: dynamo captures two graphs."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        self.second = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.first(x)
        torch._dynamo.graph_break()
        return self.second(h)


MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[], tuple]]] = {
    name: (factory, (lambda make=make: make(2))) for name, (factory, make) in ZOO.items() if name != "tiny-llama"
}
MODELS["gpt2-hf"] = (gpt2, lambda: (torch.randint(0, 128, (2, 16)),))


def _build(name: str) -> tuple[nn.Module, tuple]:
    torch.manual_seed(0)
    factory, inputs = MODELS[name]
    return factory().eval(), inputs()


def _logits(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out


def assert_same(got: Any, want: Any, exact: bool = True) -> None:
    got, want = _logits(got), _logits(want)
    assert got.shape == want.shape, f"shape {tuple(got.shape)} != eager {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"dtype {got.dtype} != eager {want.dtype}"
    if exact:
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    else:
        torch.testing.assert_close(got, want)


def assert_weights_placed(pm: rotafx.PipelineModule, model: nn.Module) -> None:
    """Every parameter is in exactly the stages whose layers read it (one, or each for a shared weight)."""
    plan = pm.plan
    prof, stages = plan.profile, plan.partition.stages
    readers: dict[str, set[int]] = {}
    for l, layer in enumerate(prof.layers):
        for w in layer.weight_names:
            readers.setdefault(w, set()).add(stages[l])
    held: dict[str, set[int]] = {}
    for st in pm.stages:
        for w in st.weight_names:
            assert w not in held or st.index not in held[w], f"{w} twice in stage {st.index}"
            held.setdefault(w, set()).add(st.index)
    assert held == readers
    # on the same device a stage holds the model's own tensor: every parameter object is in some stage
    in_stages = {id(t) for st in pm.stages for t in st.parameters()}
    lost = [n for n, p in model.named_parameters() if id(p) not in in_stages]
    assert not lost, f"parameters in no stage: {lost}"


# ---------------------------------------------------------------------------
# rotafx.partition (torch.export, no torch.compile)


@pytest.mark.parametrize("name", sorted(MODELS.keys() - {"small-gpt"}))
def test_partition_equals_eager(name: str) -> None:
    model, inputs = _build(name)
    want = model(*inputs)
    pm = rotafx.partition(model, inputs, topology=tight_topology(model, inputs), devices=ON_CPU)
    assert len(pm.stages) >= 2, f"{name}: the tight topology should force a cut, got {pm.plan.partition.stages}"
    assert all(st.device == torch.device("cpu") for st in pm.stages)
    assert len(pm.plan.rewritten.transfers) >= 1
    assert_same(pm(*inputs), want)
    assert_weights_placed(pm, model)


@pytest.mark.parametrize("how", ["partition", "partition, inner aot_eager", "torch.compile"])
def test_split_model_trains_like_eager(how: str) -> None:
    # gradients flow back through the stages and transfers to the model's own parameters
    model, inputs = _build("transformer-block")
    options = dict(topology=tight_topology(model, inputs), devices=ON_CPU)
    if how.startswith("partition"):
        split: Any = rotafx.partition(model, inputs, inner="aot_eager" if "aot" in how else "eager", **options)
        with torch.no_grad():
            split(*inputs)  # a compiled stage's first call records nothing: the next must compile for autograd
    else:
        be = rotafx.backend(inner="eager", **options)
        split = torch.compile(model, backend=be, fullgraph=True)
    split(*inputs).square().mean().backward()
    plan = split.plan if how.startswith("partition") else be.plan
    assert len(plan.stages) >= 2
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model(*inputs).square().mean().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(got[n], p.grad, msg=lambda m, n=n: f"{n}: {m}")


def test_partition_under_torch_func_grad() -> None:
    model, inputs = _build("transformer-block")
    pm = rotafx.partition(model, inputs, topology=tight_topology(model, inputs), devices=ON_CPU)
    assert len(pm.stages) >= 2
    # the stages' attribute for each of the model's weights (no shared weights in this model)
    name_in_pm = {w: f"program.stage{st.index}.{st.attr_of[w]}" for st in pm.stages for w in st.weight_names}
    want = torch.func.grad(lambda p: torch.func.functional_call(model, p, inputs).square().mean())(
        dict(model.named_parameters()))
    got = torch.func.grad(lambda p: torch.func.functional_call(pm, p, inputs).square().mean())(
        {name_in_pm[n]: p for n, p in model.named_parameters()})
    for n in want:
        torch.testing.assert_close(got[name_in_pm[n]], want[n], msg=lambda m, n=n: f"{n}: {m}")


def test_partitioned_module_lists_each_weight_once_and_shows_its_transfers_to_tracers() -> None:
    model, inputs = _build("mlp")
    pm = rotafx.partition(model, inputs, topology=tight_topology(model, inputs), devices=ON_CPU)
    assert len(pm.stages) >= 2
    keys = list(pm.state_dict())
    assert len(keys) == len(set(keys)) == sum(len(st.weight_names) for st in pm.stages), keys
    assert all(k.startswith("program.stage") for k in keys), keys
    ops: list[str] = []

    class Seen(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            ops.append(str(func))
            return func(*args, **(kwargs or {}))

    with Seen():
        out = pm(*inputs)
    assert ops.count("rotafx.transfer.default") == len(pm.plan.rewritten.transfers)
    assert_same(out, model(*inputs))


def test_partitioned_module_sees_weight_changes_and_runs_stage_hooks() -> None:
    # a call runs the stages pasted into one function that reads each weight from its stage at call time
    model, inputs = _build("transformer-block")
    pm = rotafx.partition(model, inputs, topology=tight_topology(model, inputs), devices=ON_CPU)
    assert len(pm.stages) >= 2
    last = pm.stages[-1]
    name = last.weight_names[0]
    attr = last.attr_of[name]
    with torch.no_grad():
        new = torch.randn_like(model.get_parameter(name))
        setattr(last.module, attr, nn.Parameter(new.clone()))  # a new tensor object in the stage
        model.get_parameter(name).copy_(new)
        assert_same(pm(*inputs), model(*inputs))
        held = getattr(last.module, attr).detach()
        del last.module._parameters[attr]  # the weight moves from parameters to buffers (as refresh() may do)
        last.module.register_buffer(attr, held * 3)
        model.get_parameter(name).mul_(3)
        assert_same(pm(*inputs), model(*inputs))
        seen: list[str] = []
        handle = pm.stages[0].module.register_forward_hook(lambda m, a, out: seen.append("hook"))
        assert_same(pm(*inputs), model(*inputs))
        handle.remove()
    assert seen == ["hook"], "a hook on a stage module runs"


@pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated:FutureWarning")  # torch's own
def test_partitioned_module_deepcopies_and_pickles(tmp_path: Any) -> None:
    import copy

    model, inputs = _build("small-gpt-tied")
    pm = rotafx.partition(model, inputs, topology=tight_topology(model, inputs), devices=ON_CPU)
    want = model(*inputs)
    twin = copy.deepcopy(pm)
    torch.save(pm, tmp_path / "pm.pt")
    loaded = torch.load(tmp_path / "pm.pt", weights_only=False)
    for other in (twin, loaded):
        assert_same(other(*inputs), want)
        with torch.no_grad():
            for p in other.parameters():
                p.mul_(0.5)
        assert not torch.equal(_logits(other(*inputs)), _logits(want)), "the copy holds weights of its own"
        assert_same(pm(*inputs), want)
    seen: list[int] = []
    loaded.stages[-1].module.register_forward_hook(lambda *a: seen.append(1))
    loaded(*inputs)
    assert seen == [1], "hooks on a loaded module's stages run"


@pytest.mark.parametrize("codec", [None, "int8"])
def test_program_on_one_device_compiles_as_one_function(codec: str | None) -> None:
    # a transfer to the device its tensor is on, uncompressed, is the copy it is; with a codec it stays the op
    model, inputs = _build("mlp")
    pm = rotafx.partition(model, inputs, topology=tight_topology(model, inputs), devices=ON_CPU, inner="aot_eager",
                          codec=codec)
    n = len(pm.plan.rewritten.transfers)
    assert n >= 1 and all(isinstance(m, torch.fx.GraphModule) for m in pm.program.children())
    targets = [node.target for node in pm._run._compiled._lifted.graph.nodes if node.op == "call_function"]
    if codec is None:
        assert targets.count(torch.ops.aten.clone.default) == n and rotafx.ops.transfer not in targets
    else:
        assert targets.count(rotafx.ops.transfer) == n
    with torch.no_grad():
        torch.testing.assert_close(pm(*inputs), model(*inputs), **({} if codec is None else {"rtol": 0.1, "atol": 0.1}))
    assert "torch.ops.rotafx.transfer.default" in pm.program.code, "the program keeps the op"


@pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated:FutureWarning")  # torch's own
def test_compiled_program_follows_modes_conversions_and_copies() -> None:
    import copy

    model, inputs = _build("mlp")
    pm = rotafx.partition(model, inputs, topology=tight_topology(model, inputs), devices=ON_CPU, inner="aot_eager")
    x = inputs[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert pm(x).dtype == torch.bfloat16
    assert pm(x).dtype == torch.float32, "code compiled under autocast is not reused without it"
    for p in model.parameters():  # frozen, then trained: the second call must record gradients
        p.requires_grad_(False)
    assert pm(x).grad_fn is None
    for p in model.parameters():
        p.requires_grad_(True)
    pm(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    twin, loaded = copy.deepcopy(pm), pickle.loads(pickle.dumps(pm))
    doubled = {k: v * 2 for k, v in pm.state_dict().items()}
    with torch.no_grad():
        for other in (twin, loaded):  # a copy reads its own weights, also after they are replaced
            other.load_state_dict(doubled, assign=True)
            assert not torch.equal(other(x), pm(x))
        pm.double()  # the same parameter objects, converted in place
        torch.testing.assert_close(pm(x.double()), model(x.double()), rtol=0, atol=0)
    seen: list[int] = []
    pm.program.register_forward_hook(lambda *a: seen.append(1))
    pm(x.double())
    assert seen == [1], "a hook on the program runs"


class WithCond(nn.Module):
    """A ``torch.cond`` between two linears: its stage holds subgraphs, which are not tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(16, 64), nn.Linear(64, 64), nn.Linear(64, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        h = torch.cond(h.sum() > 0, lambda t: self.b(t).relu(), lambda t: self.b(t).tanh(), (h,))
        return self.c(h)


@pytest.mark.filterwarnings("ignore:rotafx. no cost rule for cond")  # the profiler says so, rightly
def test_stages_that_cannot_be_pasted_are_still_compiled() -> None:
    torch.manual_seed(0)
    model, x = WithCond().eval(), torch.randn(4, 16)
    pm = rotafx.partition(model, (x,), topology=tight_topology(model, (x,)), devices=ON_CPU, inner="aot_eager")
    assert len(pm.stages) >= 2
    assert all(isinstance(m, rotafx.runtime.local.CompiledStage) for m in pm.program.children())
    with torch.no_grad():
        torch.testing.assert_close(pm(x), model(x))


def test_a_stage_the_inner_backend_cannot_compile_runs_eagerly_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch._dynamo.backends.registry as registry

    def refuse(name: str) -> Callable[..., Any]:
        def compile_nothing(gm: Any, example: Any) -> Any:
            raise RuntimeError("this backend compiles nothing")
        return compile_nothing

    monkeypatch.setattr(registry, "lookup_backend", refuse)
    model, inputs = _build("mlp")
    pm = rotafx.partition(model, inputs, topology=tight_topology(model, inputs), devices=ON_CPU, inner="aot_eager")
    with pytest.warns(UserWarning, match="rotafx: the inner backend 'aot_eager' could not compile a stage "
                                         r"\(RuntimeError: this backend compiles nothing\); running it eagerly"):
        got = pm(*inputs)
    assert_same(got, model(*inputs))


def test_a_compiled_program_is_traced_as_its_stages() -> None:
    model, inputs = _build("mlp")
    pm = rotafx.partition(model, inputs, topology=tight_topology(model, inputs), devices=ON_CPU, inner="aot_eager")
    ep = torch.export.export(pm, inputs, strict=False)
    assert torch.ops.rotafx.transfer.default in [n.target for n in ep.graph.nodes]
    assert_same(ep.module()(*inputs), model(*inputs))
    assert_same(torch.compile(pm, backend="eager", fullgraph=True)(*inputs), model(*inputs))


def test_a_stage_compiled_on_its_own_reads_replaced_weights() -> None:
    # stages on several devices are compiled each on its own (CUDA-only in this process; here directly)
    model, inputs = _build("mlp")
    pm = rotafx.partition(model, inputs, topology=tight_topology(model, inputs), devices=ON_CPU)
    st = pm.stages[0]
    stage = rotafx.runtime.local.CompiledStage(st.module, "aot_eager")
    with torch.no_grad():
        assert_same(stage(*inputs)[0], st.module(*inputs)[0])
        for attr in st.attr_of.values():
            setattr(st.module, attr, nn.Parameter(getattr(st.module, attr).detach() * 2))
        assert_same(stage(*inputs)[0], st.module(*inputs)[0])
    assert len(stage._fns) == 1


@pytest.mark.parametrize("inner", ["aot_eager", "inductor"])
def test_compiled_program_reads_replaced_weights_without_compiling_again(inner: str) -> None:
    model, inputs = _build("mlp")
    pm = rotafx.partition(model, inputs, topology=tight_topology(model, inputs), devices=ON_CPU, inner=inner)
    assert len(pm.stages) >= 2
    compiled = [pm._run._compiled]  # stages on one device: the program is compiled as one function
    assert isinstance(compiled[0], rotafx.runtime.local.CompiledStage)
    with torch.no_grad():
        assert_same(pm(*inputs), model(*inputs), exact=False)
        # new weight tensors every call, as torch.func.functional_call passes them
        for scale in (2.0, 3.0):
            new = {n: (p * scale).requires_grad_(p.requires_grad) for n, p in model.named_parameters()}
            name_in_pm = {w: f"program.stage{st.index}.{st.attr_of[w]}" for st in pm.stages for w in st.weight_names}
            got = torch.func.functional_call(pm, {name_in_pm[n]: t for n, t in new.items()}, inputs)
            assert_same(got, torch.func.functional_call(model, new, inputs), exact=False)
        assert [len(m._fns) for m in compiled] == [1] * len(compiled), "no stage compiled again"
        assert_same(pm(*inputs), model(*inputs), exact=False)  # the stages' own weights again
        st = pm.stages[0]
        name = next(w for w in st.weight_names if model.get_parameter(w).dim() == 2)
        w = getattr(st.module, st.attr_of[name]).detach()
        setattr(st.module, st.attr_of[name], nn.Parameter(w.t().contiguous().t()))  # same values, other strides
        assert_same(pm(*inputs), model(*inputs), exact=False)
        assert len(compiled[0]._fns) == 2, "a weight with other strides compiles the stage again"
    loaded = pickle.loads(pickle.dumps(pm))  # compiled code stays behind; the stages compile again
    with torch.no_grad():
        assert_same(loaded(*inputs), model(*inputs), exact=False)


def test_partitioned_module_compiles_and_exports_with_its_transfers() -> None:
    model, inputs = _build("mlp")
    pm = rotafx.partition(model, inputs, topology=tight_topology(model, inputs), devices=ON_CPU)
    n = len(pm.plan.rewritten.transfers)
    assert n >= 1
    assert_same(torch.compile(pm, backend="eager", fullgraph=True)(*inputs), model(*inputs))
    ep = torch.export.export(pm, inputs, strict=False)
    assert [t for t in (node.target for node in ep.graph.nodes) if t is torch.ops.rotafx.transfer.default] != []
    assert_same(ep.module()(*inputs), model(*inputs))


def test_partition_tied_weight_is_held_by_both_stages() -> None:
    model, inputs = _build("small-gpt-tied")
    pm = rotafx.partition(model, inputs, topology=tight_topology(model, inputs), devices=ON_CPU)
    holders = [st.index for st in pm.stages if any(w.endswith("tokens.weight") or w == "lm_head.weight"
                                                     for w in st.weight_names)]
    assert len(holders) == 2, f"embedding and head are on different stages, each holds the tied weight: {holders}"
    assert_same(pm(*inputs), model(*inputs))


def test_partition_default_is_one_local_stage() -> None:
    model, inputs = _build("mlp")
    pm = rotafx.partition(model, inputs)
    assert [(st.node, st.device) for st in pm.stages] == [("local", torch.device("cpu"))]
    assert pm.plan.rewritten.transfers == []
    assert_same(pm(*inputs), model(*inputs))
    assert rotafx.last_plan() is pm.plan


def test_partition_with_codec_stays_close() -> None:
    model, inputs = _build("transformer-block")
    pm = rotafx.partition(model, inputs, topology=tight_topology(model, inputs), devices=ON_CPU, codec="bf16")
    assert all(n.args[2] == "bf16" for n in pm.plan.rewritten.transfers)
    torch.testing.assert_close(pm(*inputs), model(*inputs), rtol=0.05, atol=0.05)


# ---------------------------------------------------------------------------
# torch.compile(backend="rotastellar")


def test_entry_point_is_the_only_registration() -> None:
    eps = [ep for ep in importlib.metadata.entry_points(group="torch_dynamo_backends") if ep.name == "rotastellar"]
    assert [ep.value for ep in eps] == ["rotafx.backend:rotastellar"]
    from torch._dynamo.backends.registry import lookup_backend

    assert lookup_backend("rotastellar") is rotastellar
    assert "rotastellar" in torch._dynamo.list_backends()


def test_plain_backend_name_runs_on_one_local_device() -> None:
    torch._dynamo.reset()
    model, inputs = _build("convnet")
    out = torch.compile(model, backend="rotastellar")(*inputs)  # inner inductor by default, as torch.compile
    assert_same(out, model(*inputs), exact=False)
    plan = rotafx.last_plan()
    assert [st.node for st in plan.stages] == ["local"] and plan.inner == "inductor"


@pytest.mark.parametrize("name", ["mlp", "convnet", "transformer-block", "small-gpt", "small-gpt-tied", "gpt2-hf"])
def test_compile_with_options_equals_eager(name: str) -> None:
    torch._dynamo.reset()
    model, inputs = _build(name)
    want = model(*inputs)
    opts = {"topology": tight_topology(model, inputs), "devices": ON_CPU, "inner": "eager"}
    compiled = torch.compile(model, backend="rotastellar", options=opts, fullgraph=True)
    assert_same(compiled(*inputs), want)
    plan = rotafx.last_plan()
    assert len(plan.stages) >= 2
    assert_same(compiled(*inputs), want)  # a second call reuses the plan


def test_configured_backend_object_and_weight_updates() -> None:
    torch._dynamo.reset()
    model, inputs = _build("small-gpt")
    be = rotafx.backend(topology=tight_topology(model, inputs), devices=["cpu"] * 3, objective="maximize_throughput", inner="eager")
    compiled = torch.compile(model, backend=be, fullgraph=True)
    assert_same(compiled(*inputs), model(*inputs))
    assert len(be.plans) == 1 and be.plan.partition.objective.name == "maximize_throughput"
    with torch.no_grad():
        model.lm_head.weight.mul_(-1.5)  # in place: the stage sees it
    assert_same(compiled(*inputs), model(*inputs))


def test_new_batch_sizes_share_one_dynamic_plan_without_replanning() -> None:
    """The second batch size makes dynamo capture a graph with a dynamic batch; planning it
    must not specialise it, so later sizes run on that plan without a recompile."""
    torch._dynamo.reset()
    model, (x,) = _build("small-gpt")
    largest = torch.randint(0, 256, (7, x.shape[1]))
    be = rotafx.backend(topology=tight_topology(model, (largest,)), devices=ON_CPU, inner="eager")
    compiled = torch.compile(model, backend=be, fullgraph=True)
    with torch.no_grad():
        for batch in (2, 5, 3, 7, 2):
            xb = torch.randint(0, 256, (batch, x.shape[1]))
            assert_same(compiled(xb), model(xb))
    assert len(be.plans) == 2, [str(p) for p in be.plans]
    assert be.plans[0].size_hints == {} and list(be.plans[1].size_hints.values()) == [5]
    assert "dynamic sizes costed at" in str(be.plans[1])


@pytest.mark.parametrize("inner", ["aot_eager", "inductor"])
def test_compiled_stages_of_a_dynamic_graph_follow_new_sizes(inner: str) -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    be = rotafx.backend(inner=inner)
    compiled = torch.compile(model, backend=be)
    with torch.no_grad():
        for batch in (2, 5, 3, 7):
            x = torch.randn(batch, 8)
            assert_same(compiled(x), model(x), exact=False)
    assert len(be.plans) == 2


def test_recompiled_graph_with_the_same_costs_reuses_the_placement(monkeypatch: pytest.MonkeyPatch) -> None:
    torch._dynamo.reset()
    model, inputs = _build("small-gpt")
    topo = tight_topology(model, inputs)
    first = rotafx.backend(topology=topo, devices=ON_CPU, inner="eager")
    assert_same(torch.compile(model, backend=first, fullgraph=True)(*inputs), model(*inputs))
    solves: list[int] = []
    real = rotafx.PartitionOptimizer.optimize
    monkeypatch.setattr(rotafx.PartitionOptimizer, "optimize", lambda self, *a, **k: solves.append(1) or real(self, *a, **k))
    # another instance (other weights, same shapes) after a reset: a new graph with the same costs
    torch._dynamo.reset()
    torch.manual_seed(1)
    other = rotafx.models.small_gpt().eval()
    second = rotafx.backend(topology=topo, devices=ON_CPU, inner="eager")
    assert_same(torch.compile(other, backend=second, fullgraph=True)(*inputs), other(*inputs))
    assert solves == [] and second.plan.reused and "reused" in str(second.plan)
    fresh = rotafx.PartitionOptimizer().optimize(second.plan.profile, topo)
    assert second.plan.partition.stages == fresh.stages and second.plan.partition.profile is second.plan.profile
    # a placement moved by hand is not what later graphs reuse
    moved = first.plan.partition  # the object that was solved (and cached)
    moved.stages = (0,) * len(moved.stages)  # what a valid move_layer(...).recalculate() does in place
    torch._dynamo.reset()
    fourth = rotafx.backend(topology=topo, devices=ON_CPU, inner="eager")
    assert_same(torch.compile(other, backend=fourth, fullgraph=True)(*inputs), other(*inputs))
    assert fourth.plan.reused and fourth.plan.partition.stages == fresh.stages != moved.stages
    # other costs (another objective) are solved again
    third = rotafx.backend(topology=topo, devices=ON_CPU, objective="minimize_bandwidth", inner="eager")
    torch._dynamo.reset()
    assert_same(torch.compile(other, backend=third, fullgraph=True)(*inputs), other(*inputs))
    assert len(solves) == 2 and not third.plan.reused


def test_graph_break_plans_each_graph_and_warns() -> None:
    torch._dynamo.reset()
    torch.manual_seed(0)
    model, x = GraphBreak().eval(), torch.randn(4, 32)
    be = rotafx.backend(inner="eager")
    with pytest.warns(UserWarning, match="rotafx: the model has a graph break.*fullgraph=True"):
        out = torch.compile(model, backend=be)(x)
    assert_same(out, model(x))
    assert len(be.plans) == 2
    pm = rotafx.partition(model, (x,), topology=tight_topology(model, (x,)), devices=ON_CPU)
    assert_same(pm(x), model(x))


def test_codec_through_compile_and_placement_log(caplog: pytest.LogCaptureFixture) -> None:
    torch._dynamo.reset()
    model, inputs = _build("mlp")
    be = rotafx.backend(topology=tight_topology(model, inputs), devices=ON_CPU, codec="fp16", inner="eager")
    with caplog.at_level(logging.INFO, logger="rotafx"):
        out = torch.compile(model, backend=be, fullgraph=True)(*inputs)
    torch.testing.assert_close(out, model(*inputs), rtol=1e-2, atol=1e-2)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "codec fp16" in text and "transfers in" in text and "cpu1" in text
    assert "torch.ops.rotafx.transfer.default" in be.plan.module.program.code


def test_partitioned_decorator() -> None:
    torch._dynamo.reset()

    @rotafx.partitioned(topology=three_cpus(12_000), devices=ON_CPU, objective="minimize_latency", fullgraph=True, inner="eager")
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(32, 32) for _ in range(6))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for layer in self.layers:
                x = torch.relu(layer(x))
            return x

    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(4, 32)
    want = x
    for layer in net.layers:
        want = torch.relu(layer(want))
    assert_same(net(x), want)
    assert len(net.rotafx_plans) == 1 and len(net.rotafx_plans[0].stages) >= 2


def test_inductor_inner_backend() -> None:
    torch._dynamo.reset()
    model, inputs = _build("mlp")
    be = rotafx.backend(topology=tight_topology(model, inputs), devices=ON_CPU, inner="inductor")
    out = torch.compile(model, backend=be, fullgraph=True)(*inputs)
    assert_same(out, model(*inputs), exact=False)
    assert len(be.plan.stages) >= 2 and be.plan.inner == "inductor"


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_gpus() -> None:
    torch._dynamo.reset()
    model, inputs = _build("small-gpt")
    topo = tight_topology(model, inputs)
    pm = rotafx.partition(model, inputs, topology=topo, devices={"cpu0": "cuda:0", "cpu1": "cuda:1", "cpu2": "cuda:1"})
    out = pm(*inputs)
    assert out.device == inputs[0].device
    torch.testing.assert_close(out, model(*inputs), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------
# bad input: errors start with rotafx: and name the option and the numbers


def test_unknown_option() -> None:
    with pytest.raises(BackendError, match=r"(?s)rotafx: unknown option\(s\) \['topolgy'\].*topology:"):
        rotafx.backend(topolgy={})


def test_unknown_option_through_torch_compile() -> None:
    torch._dynamo.reset()
    model, inputs = _build("mlp")
    with pytest.raises(Exception, match=r"rotafx: unknown option\(s\) \['stages'\]"):
        torch.compile(model, backend="rotastellar", options={"stages": 3})(*inputs)


@pytest.mark.parametrize("option, value, match", [
    ("codec", "int4", r"rotafx: option codec: unknown transfer codec 'int4'"),
    ("inner", "tvm", r"rotafx: option inner='tvm' is not supported; use one of eager, inductor"),
    ("objective", "fastest", r"rotafx: option objective='fastest' is not known"),
    ("time_limit", -1, r"rotafx: option time_limit=-1 must be a positive"),
])
def test_bad_option_values(option: str, value: Any, match: str) -> None:
    with pytest.raises(BackendError, match=match):
        rotafx.backend(**{option: value})


@pytest.mark.skipif(torch.cuda.device_count() > 7, reason="this machine has a cuda:7")
def test_device_that_does_not_exist() -> None:
    topo = three_cpus(1e9)
    with pytest.raises(BackendError, match=r"rotafx: devices\['cpu1'\] = 'cuda:7'.*(no cuda device|8|cuda:0 \.\.)"):
        rotafx.backend(topology=topo, devices={"cpu0": "cpu", "cpu1": "cuda:7", "cpu2": "cpu"})
    with pytest.raises(BackendError, match=r"rotafx: devices\[2\] \(node cpu2\) = 'npu:0': 'npu' is not a torch device type"):
        rotafx.backend(topology=topo, devices=["cpu", "cpu", "npu:0"])
    with pytest.raises(BackendError, match=r"rotafx: devices lists 2 devices but the chain has 3 stages"):
        rotafx.backend(topology=topo, devices=["cpu", "cpu"])
    with pytest.raises(BackendError, match=r"rotafx: devices gives no torch device for the node\(s\) \['cpu2'\]"):
        rotafx.backend(topology=topo, devices={"cpu0": "cpu", "cpu1": "cpu"})


def test_topology_too_small_names_the_layer_and_sizes() -> None:
    model, inputs = _build("mlp")
    with pytest.raises(BackendError, match=r"rotafx: the topology cannot hold Sequential: .*layer \d+ \(\d+\).*needs [\d.]+ [kMG]?B alone.*largest node.*too large"):
        rotafx.partition(model, inputs, topology=three_cpus(1000), devices=ON_CPU)


def test_topology_too_small_through_torch_compile_is_not_a_silent_fallback() -> None:
    torch._dynamo.reset()
    model, inputs = _build("mlp")
    with pytest.raises(Exception, match=r"rotafx: the topology cannot hold"):
        torch.compile(model, backend="rotastellar", options={"topology": three_cpus(1000), "devices": ON_CPU})(*inputs)


def test_torch_compile_mode_is_refused() -> None:
    with pytest.raises(BackendError, match=r"rotafx: torch.compile\(mode='max-autotune'\) is not supported"):
        RotaStellarBackend()(None, [], mode="max-autotune")  # type: ignore[arg-type]


def test_partition_of_something_that_is_not_a_module() -> None:
    with pytest.raises(BackendError, match=r"rotafx: partition takes a torch.nn.Module, got function"):
        rotafx.partition(lambda x: x + 1, (torch.randn(2),))
    with pytest.raises(BackendError, match=r"got function"):
        rotafx.export(lambda x: x + 1, (torch.randn(2),), path="/nonexistent/never-written")


def test_batch_norm_in_training_mode_updates_the_models_own_statistics() -> None:
    """Stages on the model's device hold its very buffers: outputs and running statistics are eager's, and no warning;
    a stage holding a copy (on another device) would update the copy, which rotafx says."""
    from rotafx.backend.partition import _warn_on_running_statistics
    from tests.models import convnet

    torch.manual_seed(0)
    eager, split = convnet().train(), convnet().train()
    split.load_state_dict(eager.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pm = rotafx.partition(split, (x,), topology=tight_topology(split, (x,)), devices=ON_CPU)
    assert len(pm.stages) >= 2
    for _ in range(2):
        torch.testing.assert_close(pm(x), eager(x), rtol=1e-6, atol=1e-6)
    for (name, a), (_, b) in zip(eager.named_buffers(), split.named_buffers()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6, msg=name)
    st = next(st for st in pm.stages if any(w.endswith("running_mean") for w in st.weight_names))
    w = next(w for w in st.weight_names if w.endswith("running_mean"))
    setattr(st.module, st.attr_of[w], getattr(st.module, st.attr_of[w]).clone())  # what a stage elsewhere holds
    with pytest.warns(UserWarning, match=rf"training mode: .* update running statistics; the stages on {st.node} "
                                         r"\(cpu\) update their own copies, not the model's buffers. Call model.eval\(\)"):
        _warn_on_running_statistics(split, pm.plan)


@pytest.mark.parametrize("inner", ["aot_eager", "inductor"])
def test_a_dynamic_graph_is_compiled_once_for_every_size(inner: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stages on one device: the dynamic graph is compiled by the inner backend once, within dynamo's tracing, with
    symbolic sizes (a decode step at every context length), not once per size at its first call."""
    from rotafx.runtime.local import CompiledStage

    calls: list[tuple] = []
    original = CompiledStage._compile
    monkeypatch.setattr(CompiledStage, "_compile", lambda self, ex: calls.append(tuple(ex[0].shape)) or original(self, ex))
    be = _small_gpt_at_batches(inner, (2, 5, 3, 7, 4))
    assert len(be.plans) == 2 and be.plans[1].size_hints and len(be.plans[1].stages) >= 2
    assert calls == [(2, 32)], f"only the first, static graph compiles at its first call: {calls}"


def _small_gpt_at_batches(inner: str, batches: tuple[int, ...]) -> RotaStellarBackend:
    """The small GPT compiled through the backend (three CPU nodes, the model cut) and called at each batch size
    (the second makes dynamo's graph dynamic), each output checked against eager; returns the backend."""
    torch._dynamo.reset()
    model, (x,) = _build("small-gpt")
    largest = torch.randint(0, 256, (max(batches), x.shape[1]))
    be = rotafx.backend(topology=tight_topology(model, (largest,)), devices=ON_CPU, inner=inner)
    compiled = torch.compile(model, backend=be, fullgraph=True)
    with torch.no_grad():
        for batch in batches:
            xb = torch.randint(0, 256, (batch, x.shape[1]))
            assert_same(compiled(xb), model(xb), exact=False)
    return be


def _count_stage_compiles(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple, tuple, int]]:
    """Record each compilation of a CompiledStage: the shapes of its tensor inputs and of its weights, and the number
    of symbolic sizes it added to the shape environment of its fake inputs (a weight fakified with sizes of its own
    adds some). A stage the inner backend fails on (run eagerly, with a warning) fails the test."""
    from rotafx.runtime.local import CompiledStage

    calls: list[tuple[tuple, tuple, int]] = []
    original = CompiledStage._compile

    def counting(self: CompiledStage, example: list[Any]) -> Any:
        n = len(example) - len(self._weights.reads)
        shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else () for t in example]
        shape_env = getattr(torch._guards.detect_fake_mode(example), "shape_env", None)
        symbols = len(shape_env.backed_var_to_val) if shape_env is not None else 0
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="rotafx: the inner backend")
            fn = original(self, example)
        added = len(shape_env.backed_var_to_val) - symbols if shape_env is not None else 0
        calls.append((tuple(shapes[:n]), tuple(shapes[n:]), added))
        return fn

    monkeypatch.setattr(CompiledStage, "_compile", counting)
    return calls


def _symbolic(shape: tuple) -> bool:
    return any(not isinstance(d, int) for d in shape)


def _stages_apart(monkeypatch: pytest.MonkeyPatch, copies: bool = False) -> None:
    """Every stage compiled on its own, what stages on several devices get. This machine may have one device: stages
    that cannot be pasted into one function take the same path, so pasting is turned off. ``copies``: each stage's
    weights are replaced by copies before it compiles, as a stage on another device holds them."""
    import rotafx.runtime.local as local

    monkeypatch.setattr(local, "_pastable", lambda stage: False)
    if not copies:
        return
    original = local.CompiledStage.compile_symbolic

    def on_copies(self: local.CompiledStage, device: torch.device) -> bool:
        for mod, target in self._weights.reads:
            owner, name = local._owner(mod, target)
            w = getattr(owner, name)
            copy = w.detach().clone()
            local._set(owner, name, nn.Parameter(copy, w.requires_grad) if isinstance(w, nn.Parameter) else copy)
        self._weights = local._WeightReader(self._weights.reads)
        return original(self, device)

    monkeypatch.setattr(local.CompiledStage, "compile_symbolic", on_copies)


@pytest.mark.parametrize("inner", ["aot_eager", "inductor"])
def test_stages_compiled_on_their_own_compile_a_dynamic_graph_once(inner: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stages on several devices are compiled each on its own; for a graph dynamo made dynamic, each stage is compiled
    once, with symbolic sizes for its inputs and static ones for its weights, not again at every new size (a decode
    step at every context length)."""
    from rotafx.runtime.local import CompiledStage

    _stages_apart(monkeypatch, copies=True)
    calls = _count_stage_compiles(monkeypatch)
    static, dynamic = _small_gpt_at_batches(inner, (2, 5, 3, 7, 4, 6)).plans
    assert dynamic.size_hints and len(dynamic.stages) >= 2, str(dynamic)
    assert all(isinstance(getattr(dynamic.module.program, f"stage{st.index}"), CompiledStage) for st in dynamic.stages)
    symbolic = [any(map(_symbolic, inputs)) for inputs, _, _ in calls]
    assert symbolic == [False] * len(static.stages) + [True] * len(dynamic.stages), (
        f"the static graph's {len(static.stages)} stages at batch 2, then each of the dynamic graph's "
        f"{len(dynamic.stages)} stages once with symbolic sizes; compiled: {calls}")
    assert not any(added for _, _, added in calls), f"compiled weights with symbolic sizes of their own: {calls}"


@pytest.mark.parametrize("inner", ["aot_eager", "inductor"])
def test_stages_of_a_dynamic_graph_compiled_once_train_like_eager(inner: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stages compiled with symbolic sizes give eager's gradients at every size (their backward is compiled from
    the forward of its own stage); a call their code was not compiled for (another grad mode, other strides) compiles
    for it, and gives the stage's eager output."""
    import copy

    _stages_apart(monkeypatch)
    calls = _count_stage_compiles(monkeypatch)
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 8))
    ref = copy.deepcopy(model)
    be = rotafx.backend(topology=tight_topology(model, (torch.randn(9, 16),)), devices=ON_CPU, inner=inner)
    compiled = torch.compile(model, backend=be, fullgraph=True)
    for batch in (2, 5, 3, 9, 4):
        xb = torch.randn(batch, 16)
        model.zero_grad()
        ref.zero_grad()
        compiled(xb).square().sum().backward()
        ref(xb).square().sum().backward()
        for (name, p), q in zip(model.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p.grad, q.grad, msg=lambda m, name=name: f"gradient of {name}: {m}")
    static, dynamic = be.plans
    once = len(static.stages) + len(dynamic.stages)
    assert len(dynamic.stages) >= 2 and len(calls) == once, calls
    first = getattr(dynamic.module.program, f"stage{dynamic.stages[0].index}")
    values = [n.meta.get("val", n.meta.get("example_value")) for n in first.gm.graph.nodes if n.op == "placeholder"]
    args = [torch.randn([d if isinstance(d, int) else 3 for d in v.shape]) if isinstance(v, torch.Tensor) else 3
            for v in values]
    torch.testing.assert_close(first(*args), first.gm(*args))  # the symbolic code: grad mode as when compiled
    assert len(calls) == once
    with torch.no_grad():  # another global state than the symbolic code's
        torch.testing.assert_close(first(*args), first.gm(*args))
    assert len(calls) == once + 1
    transposed = [a.t().contiguous().t() if isinstance(a, torch.Tensor) else a for a in args]  # column-major
    torch.testing.assert_close(first(*transposed), first.gm(*transposed))
    assert len(calls) == once + 2, "strides the symbolic code was not compiled for: compiled for them"


@pytest.mark.parametrize("size", ["s0", "s0 + 1"])
def test_symbolic_code_of_a_stage_runs_where_its_shape_guards_hold(size: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage compiled for a fake input of size (s0, 3) runs that code at any s0 >= 2 (dynamo's 0/1 rule) with
    the strides it was compiled for, and compiles for any other call; one of size (s0 + 1, 3), whose call does not
    give s0, compiles for every call. Each output equals the stage run eagerly."""
    import torch.fx as fx
    from torch._dynamo.source import LocalSource
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    from rotafx.runtime.local import CompiledStage

    calls = _count_stage_compiles(monkeypatch)
    gm = fx.symbolic_trace(lambda x: (x * 2 + 1,))
    mode = FakeTensorMode(shape_env=ShapeEnv())
    fake = mode.from_tensor(torch.randn(5, 3), source=LocalSource("x"), static_shapes=False)
    if size == "s0 + 1":
        with mode:
            fake = torch.empty(fake.shape[0] + 1, 3)
    next(iter(gm.graph.nodes)).meta["val"] = fake
    stage = CompiledStage(gm, "aot_eager")
    assert stage.compile_symbolic(torch.device("cpu")) and len(calls) == 1
    inputs = [torch.randn(7, 3), torch.randn(4, 3), torch.randn(1, 3), torch.randn(3, 7).t(), torch.randn(7, 3).double(),
              torch.randn(8, 3)[1:], torch.randn(7, 3, requires_grad=True)]  # a view at offset 3; one needing grad
    for x in inputs:
        torch.testing.assert_close(stage(x), gm(x))
    compiled_for = [shapes[0] for shapes, _, _ in calls[1:]]
    if size == "s0":
        assert compiled_for == [(1, 3), (7, 3), (7, 3), (7, 3), (7, 3)], (
            f"compiled for size 1, column-major, double, another storage offset and requires_grad only: {calls}")
    else:
        assert compiled_for == [tuple(x.shape) for x in inputs], f"compiled for every call: {calls}"
