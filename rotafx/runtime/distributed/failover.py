"""Failover: requests and token generation over an ordered list of routes, switching when one fails or its links close.

A *route* is a running pipeline of one plan (a :class:`~.driver.Driver`, or a
:class:`~.launch.LocalCluster`): the route through orbit first, say, and the ground-only
route after it, each over the stages that hold its layers' weights. :class:`Failover` sends
every call to the first route that has not failed and whose links are up (by a
:class:`~rotafx.orbits.Schedule`, in emulated time). When a route fails (a stage dies, stops
or hangs: :class:`~.transport.DistributedError`), the requests it had not answered are sent
again on the next route, and each sequence it was generating is prefilled again there with its
prompt and the tokens it had made (as Petals rebuilds a lost cache on another server), then
continues. Every request is answered once; every sequence gets ``max_new_tokens`` (or stops at
EOS) as if nothing had happened, greedy tokens equal to the model's.

With a schedule, time runs from ``start_s`` at ``time_scale`` schedule seconds per wall second
(a day in minutes), and the route is checked before every ``batch`` requests and every
``recheck_tokens`` tokens: a route whose window closes takes no new work. Each route's links
follow the schedule too (:meth:`~.driver.Driver.set_link_windows`): a message that would arrive
while a link it crosses is out of its windows is lost, the route raises
:class:`~.transport.LinkDownError`, and its lost requests (or the sequences that lost a step,
prefilled again with the tokens they had) go to the next route; the route is down, not failed,
and takes work again once the schedule has its links up.

:meth:`Failover.from_horizon` serves the routes of a horizon plan (:func:`rotafx.orbits.horizon.export_routes`
wrote them): at each check the route the plan names for the schedule time comes first (``prefer``), then the
others, the ground-only fallback last.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ...plan.schema import PlanSpec, read_plan
from ..sampling import GenerationError, token_ids
from .launch import launch_local
from .transport import DistributedError, LinkDownError

__all__ = ["Failover", "FailoverEvent", "ROUTE_DIR"]

ROUTE_DIR = "route{}"  # route i of a horizon plan lies in directory / ROUTE_DIR.format(i)


@dataclass(frozen=True)
class FailoverEvent:
    """A switch of route: at schedule time ``t_s``, from route ``src`` to ``dst`` (``None``: no route left), and why."""

    t_s: float
    src: int | None
    dst: int | None
    why: str


def _driver(route: Any) -> Any:
    return getattr(route, "driver", route)


def _links(plan: PlanSpec) -> list[tuple[str, str]]:
    """Every link a route's plan crosses: its hops', and a generated token's trip back (``return_links``)."""
    back = plan.generation.return_links if plan.generation is not None else ()
    return [(str(l["src"]), str(l["dst"])) for l in (*(l for h in plan.hops for l in h.links), *back)]


class Failover:
    """Calls over ``routes`` in order of preference; see the module docstring.

    Args:
        routes: running pipelines (``Driver`` or ``LocalCluster``), the preferred first; for
            :meth:`generate`, plans exported with generation programs for one sequence per call.
        schedule: a :class:`~rotafx.orbits.Schedule`; a route is up at ``t`` when every link its plan's
            hops cross is in a window at ``t`` and every node its stages run on may compute then (a node with
            a power model: its battery above the reserve, ``Schedule.available_spans``). ``None``: every
            route is always up.
        start_s: the schedule time of the first call; ``time_scale``: schedule seconds per wall second.
        batch: requests sent between checks of the route (with a schedule).
        recheck_tokens: tokens generated between checks of the route (with a schedule).
        clock: wall seconds (tests pass their own).
        prefer: the route to try first at schedule time ``t`` (``None``: none), before the others in order.
        emulate_windows: with a schedule, make each route's links go down out of their windows
            (:meth:`Driver.set_link_windows`, schedule time ``start_s`` now); a route without that method (not a
            Driver) is only switched away from. ``False``: the links are real and go down by themselves.

    >>> # with launch_local("orbit-plan") as a, launch_local("ground-plan") as b:
    >>> #     f = Failover([a, b], schedule=day, time_scale=600); outs = f.run(requests)
    """

    def __init__(self, routes: Sequence[Any], *, schedule: Any = None, start_s: float = 0.0, time_scale: float = 1.0,
                 batch: int = 8, recheck_tokens: int = 16, clock: Callable[[], float] = time.monotonic,
                 prefer: Callable[[float], int | None] | None = None, emulate_windows: bool = True) -> None:
        if not routes:
            raise ValueError("rotafx: Failover needs at least one route (a Driver or LocalCluster)")
        for i, r in enumerate(routes):
            d = _driver(r)
            if not (callable(getattr(d, "run", None)) and hasattr(getattr(d, "plan", None), "hops")):
                raise TypeError(f"rotafx: Failover route {i} is a {type(r).__name__}, not a running pipeline: give "
                                f"Driver(plan_dir) or launch_local(plan_dir) objects, the preferred route first")
        for name, v in (("batch", batch), ("recheck_tokens", recheck_tokens)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"rotafx: {name} must be a positive integer, got {v!r}")
        if not (isinstance(time_scale, (int, float)) and time_scale > 0):
            raise ValueError(f"rotafx: time_scale must be a positive number of schedule seconds per second, "
                             f"got {time_scale!r}")
        self.routes = list(routes)
        self.schedule, self.start_s, self.time_scale = schedule, float(start_s), float(time_scale)
        self.batch, self.recheck_tokens = batch, recheck_tokens
        self.clock = clock
        self._t0 = clock()
        self._computes: dict[str, list[tuple[float, float]]] = {}  # node -> when its battery lets it compute
        self.failed: set[int] = set()
        self.lost_at: dict[int, float] = {}  # route -> the schedule time it last lost work to a link down
        self.events: list[FailoverEvent] = []
        self.current: int | None = None
        self._why: dict[int, str] = {}  # route -> why it was left (failed, lost work), for the next switch's event
        self._checked_s = self.start_s  # the schedule time of the last route check
        self.prefer = prefer
        self._owned: list[Any] = []  # routes from_horizon launched: close() ends them
        self._follows: set[int] = set()  # routes whose links follow the schedule (their calls get at_s)
        if schedule is not None and emulate_windows:
            for i, r in enumerate(self.routes):
                d = _driver(r)
                if callable(getattr(d, "set_link_windows", None)):
                    links = dict.fromkeys(_links(d.plan))
                    d.set_link_windows({k: [(w.start_s, w.end_s) for w in schedule.windows[k]] for k in links
                                        if k in schedule.windows}, time_scale=self.time_scale, start_s=self.start_s)
                    self._follows.add(i)

    @classmethod
    def from_horizon(cls, plan: Any, directory: str | os.PathLike[str], *, schedule: Any, start_s: float = 0.0,
                     time_scale: float = 1.0, batch: int = 8, recheck_tokens: int = 16,
                     clock: Callable[[], float] = time.monotonic,
                     launch: Callable[[Path], Any] = launch_local, emulate_windows: bool = True) -> "Failover":
        """Serve the routes of a horizon plan: at each check, the route ``plan.route_at(t)`` names for the schedule
        time, else the next of ``plan.routes()`` that has not failed and whose links are up (the ground-only
        fallback last).

        Args:
            plan: a :class:`~rotafx.orbits.horizon.HorizonPlan`.
            directory: where :func:`~rotafx.orbits.horizon.export_routes` wrote its routes (``route0``, ...).
            schedule: the :class:`~rotafx.orbits.Schedule` the plan was made for.
            start_s, time_scale, batch, recheck_tokens, clock, emulate_windows: as the constructor's.
            launch: starts a route from its plan directory (``launch_local``, or a ``functools.partial`` of it).

        Returns:
            A Failover over the launched routes, route ``i`` the ``i``-th of ``plan.routes()``; use it as a context
            manager (or call :meth:`close`) to stop them.

        Raises:
            TypeError: ``plan`` is not a horizon plan.
            ValueError: ``directory`` is empty or misses a route; a route directory holds another route's plan;
                the schedule is not the plan's (another horizon, or a route's link down where the plan serves
                on it); ``plan.routes()``'s errors (a route that uses a layer not resident on its node).

        >>> # export_routes(model, (x,), plan, directory="routes")
        >>> # with Failover.from_horizon(plan, "routes", schedule=day, time_scale=600) as f:
        >>> #     outs = f.run(requests)
        """
        if not callable(getattr(plan, "routes", None)) or not callable(getattr(plan, "route_at", None)):
            raise TypeError(f"rotafx: Failover.from_horizon takes a HorizonPlan (rotafx.orbits.horizon.plan_horizon), "
                            f"got {type(plan).__name__}")
        if not isinstance(directory, (str, os.PathLike)) or not str(os.fspath(directory)).strip():
            raise ValueError(f"rotafx: directory must name the folder export_routes wrote the routes into, got "
                             f"{directory!r}")
        if schedule is None or not callable(getattr(schedule, "link_up", None)):
            raise ValueError(f"rotafx: Failover.from_horizon needs the Schedule the plan was made for, got "
                             f"{type(schedule).__name__}")
        if not math.isclose(float(schedule.horizon_s), float(plan.horizon_s), rel_tol=1e-9):
            raise ValueError(f"rotafx: the schedule does not match the horizon plan: it spans {schedule.horizon_s:,g} s, "
                             f"the plan {plan.horizon_s:,g} s; give the schedule plan_horizon was given")
        routes = plan.routes()
        specs = [_route_plan(Path(directory), i, r) for i, r in enumerate(routes)]
        for i, (r, spec) in enumerate(zip(routes, specs)):
            _check_schedule(schedule, i, r, spec)
        index = {tuple(r.stages): i for i, r in enumerate(routes)}

        def prefer(t: float) -> int | None:
            if not 0.0 <= t < plan.horizon_s:
                return None
            stages = plan.route_at(t).stages
            return None if stages is None else index.get(tuple(stages))

        launched: list[Any] = []
        try:
            for spec in specs:
                launched.append(launch(spec.path))
            f = cls(launched, schedule=schedule, start_s=start_s, time_scale=time_scale, batch=batch,
                    recheck_tokens=recheck_tokens, clock=clock, prefer=prefer, emulate_windows=emulate_windows)
        except BaseException:
            _close_all(launched, stop=False)
            raise
        f._owned = launched
        return f

    def close(self, stop: bool = True) -> None:
        """Stop the routes :meth:`from_horizon` launched (routes given to the constructor are the caller's); with
        ``stop=False`` abort them. Every route is closed even when closing one raises (the first error is raised)."""
        owned, self._owned = self._owned, []
        _close_all(owned, stop)

    def __enter__(self) -> "Failover":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close(stop=exc[0] is None)  # leaving on an error: the routes are aborted, not asked to finish

    # -- routes ---------------------------------------------------------------------------------------------------

    def now_s(self) -> float:
        """Schedule time now."""
        return self.start_s + (self.clock() - self._t0) * self.time_scale

    def up(self, i: int, t: float) -> bool:
        """Whether every link route ``i`` crosses (its hops', and a generated token's way back) is up at schedule
        time ``t``, and every node it runs on may compute then (its battery, where the schedule has a power model)."""
        if self.schedule is None:
            return True
        plan = _driver(self.routes[i]).plan
        if not all(self.schedule.link_up(a, b, t) is not None for a, b in _links(plan)):
            return False
        return all(self._may_compute(str(st.node), t) for st in plan.stages)

    def _may_compute(self, node: str, t: float) -> bool:
        """Whether the schedule's power model lets ``node`` compute at ``t`` (a node without one always may)."""
        if node not in getattr(self.schedule, "power", {}):
            return True
        if node not in self._computes:
            self._computes[node] = self.schedule.available_spans(node)
        return any(a <= t < b for a, b in self._computes[node])

    def usable(self, i: int, t: float) -> bool:
        """Route ``i`` has not failed, its links are up at ``t``, and it lost no work to a link down at ``t`` or
        later (by the stages' reckoning of schedule time)."""
        return i not in self.failed and self.up(i, t) and t > self.lost_at.get(i, -math.inf)

    def route(self) -> int:
        """The route to use now: the one ``prefer`` names if it is usable (:meth:`usable`), else the first such in
        order; raises :class:`DistributedError` when none is."""
        t = self._checked_s = self.now_s()
        first = self.prefer(t) if self.prefer is not None else None
        order = ([first] if first is not None else []) + [i for i in range(len(self.routes)) if i != first]
        pick = next((i for i in order if self.usable(i, t)), None)
        if pick != self.current:
            why = ("first call" if self.current is None else self._why.get(self.current) or
                   ("links down" if not self.up(self.current, t) else "preferred"))
            self.events.append(FailoverEvent(t, self.current, pick, why))
            self.current = pick
        self._why.pop(pick, None)  # a route taken again starts afresh
        if pick is None:
            down = [i for i in range(len(self.routes)) if i not in self.failed]
            raise DistributedError(f"rotafx: no route at schedule time {t:,.1f} s: route(s) "
                                   f"{sorted(self.failed) or 'none'} failed, {down or 'none'} have a link down")
        return pick

    def _fail(self, i: int, e: DistributedError) -> None:
        """Route ``i`` failed: the next :meth:`route` logs the switch from it, ``failed: <what the driver said>``."""
        if isinstance(e, LinkDownError):  # down, not dead: usable again once the schedule has its links up
            when = self._checked_s if e.t_s is None else e.t_s
            self.lost_at[i] = max(self.lost_at.get(i, -math.inf), when)
            self._why[i] = (f"links down: {len(e.lost)} lost in flight ({', '.join(e.links) or 'a link'} at "
                            f"{when:,.3f} s), sent again on the next route")
            return
        self.failed.add(i)
        self._why[i] = f"failed: {e}"

    def _call(self, i: int, **kw: Any) -> dict[str, Any]:
        """The options of a call on route ``i``: the schedule time it starts at, for a route that follows it."""
        return {**kw, "at_s": self._checked_s} if i in self._follows else kw

    # -- calls ----------------------------------------------------------------------------------------------------

    generates_across_processes = True  # rotafx.generate(failover, ids, ...) calls generate

    def run(self, requests: Sequence[Any], **kw: Any) -> list[Any]:
        """Every request's output, in order, each answered once (``kw`` as :meth:`Driver.run`); a request a route
        failed or lost to a link down goes again on the next route."""
        outputs: dict[int, Any] = {}
        pending = list(range(len(requests)))
        while pending:
            i = self.route()
            chunk = pending[:self.batch] if self.schedule is not None else pending
            try:
                got = _driver(self.routes[i]).run([requests[k] for k in chunk], **self._call(i, **kw))
            except DistributedError as e:
                self._fail(i, e)
                for j, out in e.outputs.items():  # what the failed route answered stands
                    outputs[chunk[j]] = out
            else:
                outputs.update(zip(chunk, got))
            pending = [k for k in pending if k not in outputs]
        return [outputs[k] for k in range(len(requests))]

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 20, *, eos_token_id: Any = None,
                 pad_token_id: Any = None, **kw: Any) -> torch.Tensor:
        """``[B, P + n]`` token ids as :meth:`Driver.generate` gives them; a sequence whose route fails continues on
        the next one from its prompt and the tokens it had (``kw``: the other options of ``Driver.generate``)."""
        first = _driver(self.routes[0]).plan.generation
        if first is None:
            raise GenerationError("rotafx: route 0's plan has no generation programs; export it with max_context=N")
        for i, r in enumerate(self.routes):
            gen = _driver(r).plan.generation
            if gen is None or gen.batch_size != 1:
                raise GenerationError(f"rotafx: route {i}'s plan must have generation programs for one sequence per "
                                      f"call (export with max_context=N and a batch-1 example) to fail over")
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise GenerationError("rotafx: input_ids must be a [batch, prompt] tensor of token ids")
        if kw.get("timings"):
            raise GenerationError("rotafx: Failover.generate gives no timings (a sequence may run on two routes); "
                                  "trace the routes' drivers instead (Driver.trace)")
        mask = kw.pop("attention_mask", None)
        if mask is not None and not bool((torch.as_tensor(mask) != 0).all()):
            raise GenerationError("rotafx: Failover.generate takes prompts of one length (no padding): call it once "
                                  "per prompt length")
        eos, pad = token_ids(None, eos_token_id if eos_token_id is not None else list(first.eos_token_id) or None,
                             pad_token_id if pad_token_id is not None else first.pad_token_id)
        B = int(input_ids.shape[0])
        made: dict[int, list[int]] = {s: [] for s in range(B)}
        done: set[int] = set()

        def take(s: int, toks: Sequence[int]) -> None:
            for t in toks:
                made[s].append(int(t))
                if int(t) in eos or len(made[s]) >= max_new_tokens:
                    done.add(s)
                    return

        while len(done) < B:
            i = self.route()
            groups: dict[int, list[int]] = {}
            for s in range(B):
                if s not in done:
                    groups.setdefault(len(made[s]), []).append(s)
            k, seqs = min(groups.items())
            n = max_new_tokens - k
            if self.schedule is not None:
                n = min(n, self.recheck_tokens)
            prompt = torch.cat([input_ids[seqs], torch.tensor([made[s] for s in seqs], dtype=input_ids.dtype)
                                .reshape(len(seqs), k)], 1)
            try:
                out = _driver(self.routes[i]).generate(prompt, n, eos_token_id=eos, pad_token_id=pad,
                                                       **self._call(i, **kw))
            except DistributedError as e:
                self._fail(i, e)
                for j, s in enumerate(seqs):  # the tokens made before the fault, finished or not, stand
                    take(s, e.tokens.get(j, []))
                continue
            for j, s in enumerate(seqs):
                take(s, out[j, prompt.shape[1]:].tolist())
                if len(made[s]) - k < n:  # the route stopped it early: EOS
                    done.add(s)
        longest = max(len(t) for t in made.values())
        fill = pad if pad is not None else 0
        new = torch.tensor([t + [fill] * (longest - len(t)) for t in made.values()], dtype=input_ids.dtype)
        return torch.cat([input_ids, new.reshape(B, longest)], 1)


def _close_all(clusters: Sequence[Any], stop: bool) -> None:
    """Close every cluster, each even when an earlier one raised; then raise the first error."""
    first: BaseException | None = None
    for c in clusters:
        try:
            c.close(stop=stop)
        except BaseException as e:  # noqa: BLE001 - the others must still be closed
            first = first or e
    if first is not None:
        raise first


def _route_plan(directory: Path, i: int, r: Any) -> PlanSpec:
    """Route ``i``'s plan as ``export_routes`` wrote it, checked to be that route."""
    path = directory / ROUTE_DIR.format(i)
    if not (path / "plan.json").is_file():
        raise ValueError(f"rotafx: {path} holds no plan (route {i} of the horizon plan, {r.describe()}); write the "
                         f"routes with export_routes(model, example_inputs, plan, directory={str(directory)!r})")
    spec = read_plan(path)
    stages, chain = spec.partition.get("stages", []), spec.topology.get("chain", [])
    # input from others: the fields are checked before they are compared
    if not (isinstance(stages, list) and all(type(s) is int for s in stages)
            and isinstance(chain, list) and all(isinstance(n, str) for n in chain)):
        raise ValueError(f"rotafx: {path}/plan.json: partition.stages must be a list of integers and topology.chain a "
                         f"list of node names; export the routes of this horizon plan again (export_routes(..., "
                         f"overwrite=True))")
    got = list(stages)
    if got != list(r.stages) or chain != list(r.topology.chain):
        raise ValueError(f"rotafx: {path} holds the plan of another route (stages {got[:12]} on {' -> '.join(chain)}, "
                         f"against route {i}'s {list(r.stages)[:12]} on {' -> '.join(r.topology.chain)}); export the "
                         f"routes of this horizon plan again (export_routes(..., overwrite=True))")
    # whether the route is up is read from the links its hops cross: they must be the route's own
    from ...costmodel import route

    want = sorted((link.src, link.dst) for _, link in route(r.topology, r.stages).hops if link.kind != "local")
    try:
        crossed = sorted((str(link["src"]), str(link["dst"])) for hop in spec.hops for link in hop.links)
    except (KeyError, TypeError):
        crossed = None
    if crossed != want:
        raise ValueError(f"rotafx: {path}/plan.json: its hops cross the links {crossed}, but route {i} "
                         f"({r.describe()}) crosses {want}; export the routes of this horizon plan again "
                         f"(export_routes(..., overwrite=True))")
    return spec


def _check_schedule(schedule: Any, i: int, r: Any, spec: PlanSpec) -> None:
    """Where the plan serves on route ``i``, the schedule has every link its hops cross up (at each interval's
    middle): else the schedule is not the plan's."""
    for iv in r.intervals:
        t = 0.5 * (iv.start_s + iv.end_s)
        for hop in spec.hops:
            for link in hop.links:
                if schedule.link_up(str(link["src"]), str(link["dst"]), t) is None:
                    raise ValueError(f"rotafx: the schedule does not match the horizon plan: the plan serves "
                                     f"{iv.start_s:g}-{iv.end_s:g} s on route {i} ({r.describe()}), but the schedule "
                                     f"has the link {link['src']} -> {link['dst']} down at {t:g} s; give the schedule "
                                     f"plan_horizon was given")
