"""Solve: where each contiguous range of layers runs: the MILP (:mod:`.milp`), the dynamic program (:mod:`.dp`), the
paper's greedy fill (:mod:`.greedy`), brute force (:mod:`.brute_force`), feasibility (:mod:`.feasibility`), the
:class:`Partition` they give (:mod:`.partition`) and the :class:`PartitionOptimizer` that chooses among them
(:mod:`.optimizer`)."""

from .feasibility import InfeasibleError
from .optimizer import SOLVERS, PartitionOptimizer
from .partition import Partition

__all__ = ["InfeasibleError", "Partition", "PartitionOptimizer", "SOLVERS"]
