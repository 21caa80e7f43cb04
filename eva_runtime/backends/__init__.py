"""Model backends: generation and reward scoring behind two small protocols.

The phases of an eva iteration only ever call ``make_generator`` and ``make_reward_model``;
what runs underneath (transformers, vLLM, an OpenAI-compatible server, a classifier, an LLM
judge, a Python function) is a configuration choice. Importing this package stays cheap:
torch, transformers, openai and vllm are loaded by the backend that needs them, when built.
"""

from .generation import (
    BACKENDS,
    BackendError,
    Completion,
    Generator,
    SamplingParams,
    TransformersGenerator,
    make_generator,
)
from .reward_model import (
    JUDGE_FALLBACK_SCORE,
    REWARD_TYPES,
    ClassifierReward,
    JudgeReward,
    PythonReward,
    RewardModel,
    make_reward_model,
    parse_rating,
)

__all__ = [
    "BACKENDS",
    "JUDGE_FALLBACK_SCORE",
    "REWARD_TYPES",
    "BackendError",
    "ClassifierReward",
    "Completion",
    "Generator",
    "JudgeReward",
    "PythonReward",
    "RewardModel",
    "SamplingParams",
    "TransformersGenerator",
    "make_generator",
    "make_reward_model",
    "parse_rating",
]
