"""The solver: preference pairs from scored responses, and preference optimisation."""

from eva_runtime.solver.pairs import PairIndex, preference_pairs

__all__ = ["PairIndex", "preference_pairs"]
