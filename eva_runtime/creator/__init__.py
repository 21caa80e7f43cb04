"""The creator: which prompts are informative, which to keep, and how to evolve them."""

from eva_runtime.creator.informativeness import METRICS, informativeness
from eva_runtime.creator.sampling import METHODS, normalised_weights, sample_prompts, sample_size

__all__ = [
    "METHODS",
    "METRICS",
    "informativeness",
    "normalised_weights",
    "sample_prompts",
    "sample_size",
]
