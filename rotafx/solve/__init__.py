"""Solve: where each contiguous range of layers runs (MILP, dynamic program, greedy)."""

from .dp import solve_dp
from .greedy import enumerate_placements, solve_brute_force, solve_greedy
from .milp import solve_milp
from .objective import OBJECTIVES, Objective, objective
from .optimizer import InfeasibleError, Partition, PartitionOptimizer

__all__ = ["solve_dp", "solve_greedy", "solve_milp", "solve_brute_force", "enumerate_placements", "OBJECTIVES",
           "Objective", "objective", "InfeasibleError", "Partition", "PartitionOptimizer"]
