"""The EvaRun spec: one pydantic model, the single source of truth.

A spec file is a whole Kubernetes manifest (apiVersion, kind, metadata, spec) so the same
file works for ``kubectl apply`` and ``eva run``. YAML keys are camelCase, Python fields
snake_case. Defaults follow the paper's reference code (see the README's spec reference).

This module must stay light: the operator image imports it and has no torch.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from eva_runtime.api import API_VERSION, KIND

# The steps of one iteration, in order (``prepare`` runs once before iteration 0).
STEPS = ("generate", "create", "generate-evolved", "train", "evaluate")
PREPARE = "prepare"
# After evaluate, in runs with evaluation.benchmarks: the judged benchmarks.
BENCHMARK = "benchmark"
ITERATION_STEPS = (*STEPS, BENCHMARK)  # every step an iteration can have
ALL_STEPS = (PREPARE, *ITERATION_STEPS)  # every step `eva phase` runs
# The steps that sample responses: split over `generation.shards` (an Indexed Job in a cluster).
GENERATION_STEPS = ("generate", "generate-evolved")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DOTTED = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")


def parse_function_ref(ref: object) -> tuple[str, str] | None:
    """``(module, attribute)`` of ``'module:function'`` or ``'module:Class.method'``, else None.

    The one reading of a python reward's reference: the spec checks it, the reward backend
    and the runner's preflight resolve it.
    """
    if not isinstance(ref, str):
        return None
    module, sep, attribute = ref.partition(":")
    if not sep or not _DOTTED.match(module) or not _DOTTED.match(attribute):
        return None
    return module, attribute


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=True,
        validate_default=True,
        allow_inf_nan=False,  # every number finite: .inf and .nan are refused, by name
    )

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: Any) -> Any:
        """``true`` is not a count: YAML booleans are refused where a number is expected."""
        if isinstance(value, bool) and info.field_name in cls.model_fields:
            annotation = cls.model_fields[info.field_name].annotation
            if annotation in _NUMBERS:
                raise ValueError(f"must be a number, not {str(value).lower()}")
        return value


_NUMBERS = (int, float, int | None, float | None)


# --------------------------------------------------------------------------- enums


class RewardType(StrEnum):
    classifier = "classifier"
    armo = "armo"
    judge = "judge"
    python = "python"
    pairwise = "pairwise"


class PreferenceSource(StrEnum):
    """Where a pairwise reward's P(a beats b) comes from."""

    ranker = "ranker"
    judge = "judge"
    python = "python"


class GenerationBackend(StrEnum):
    auto = "auto"
    transformers = "transformers"
    vllm = "vllm"
    openai = "openai"


class Informativeness(StrEnum):
    gap = "gap"
    maxmean = "maxmean"
    mean = "mean"
    variance = "variance"
    dts = "dts"
    gapInverse = "gapInverse"
    meanInverse = "meanInverse"
    uniform = "uniform"


class Sampling(StrEnum):
    importanceWeighted = "importanceWeighted"
    greedy = "greedy"
    stratified = "stratified"


class EvolveMethod(StrEnum):
    evolInstruct = "evolInstruct"
    none = "none"


class Algorithm(StrEnum):
    dpo = "dpo"
    simpo = "simpo"
    ipo = "ipo"
    orpo = "orpo"
    rpo = "rpo"
    sppo = "sppo"


# TRL's DPO loss types that need nothing but (prompt, chosen, rejected) pairs: solver.lossType
# for algorithm dpo. (ipo is its own algorithm; sft alone is not a preference loss.)
DPO_LOSS_TYPES = (
    "sigmoid",
    "hinge",
    "robust",
    "exo_pair",
    "nca_pair",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sigmoid_norm",
)
# Loss types that read solver.labelSmoothing (robust: the flip probability; exo_pair: epsilon).
LABEL_SMOOTHING_LOSSES = ("robust", "exo_pair")


Precision = Literal["auto", "bf16", "fp16", "fp32"]
DeepSpeedMode = Literal["none", "zero3"]


# --------------------------------------------------------------------------- sections


class SecretKeyRef(_Model):
    """One key of a Kubernetes Secret in the run's namespace (never the value itself)."""

    name: str = Field(min_length=1, description="Secret name.")
    key: str = Field(min_length=1, description="Key inside the Secret.")


class OpenAIEndpoint(_Model):
    """An OpenAI-compatible server (vLLM's, TGI, hosted APIs, ``transformers serve``)."""

    base_url: str = Field(description="Server URL ending in /v1, e.g. http://vllm:8000/v1.")
    model: str = Field(description="Model name the server expects in requests.")
    api_key_env: str | None = Field(
        default=None,
        description="Environment variable holding the API key (in a cluster: filled from a "
        "Secret). None sends no key.",
    )
    api_key_secret: SecretKeyRef | None = Field(
        default=None,
        description="In a cluster: the Secret key that fills apiKeyEnv in step pods "
        "(apiKeyEnv defaults to OPENAI_API_KEY when this is set).",
    )

    @model_validator(mode="after")
    def _key_env(self) -> OpenAIEndpoint:
        if self.api_key_secret is not None and self.api_key_env is None:
            self.api_key_env = "OPENAI_API_KEY"
        return self

    @field_validator("base_url")
    @classmethod
    def _http(cls, v: str) -> str:
        from urllib.parse import urlsplit

        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        if any(c.isspace() for c in v):
            raise ValueError("must not contain spaces (percent-encode them)")
        try:
            parts = urlsplit(v)
            parts.port  # noqa: B018 - raises on a port that is not a number in 0..65535
        except ValueError as exc:
            raise ValueError(f"not a valid URL ({exc})") from None
        if not parts.hostname:
            raise ValueError("names no host")
        return v


# A hub revision: a branch, a tag or a commit (``refs/pr/1`` included); only hub models take one.
Revision = Annotated[
    str,
    Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/+-]*$"),
]
REVISION_HELP = (
    "Hub revision (branch, tag or commit) of a hub model; default: the commit the run's "
    "first download resolves, recorded so that every step and iteration loads the same weights."
)


class PolicySpec(_Model):
    model: str = Field(
        description="Hub id, local/PVC folder, a .gguf file, or pkg://<package>/<file.gguf>.",
        min_length=1,
    )
    revision: Revision | None = Field(default=None, description=REVISION_HELP)
    trust_remote_code: bool = Field(default=False, description="Run the model's own code.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="Weights dtype for generation (auto: bf16 on GPU, fp32 on CPU)."
    )


class RewardModelSpec(_Model):
    type: RewardType = Field(default=RewardType.classifier, description="How responses are scored.")
    model: str | None = Field(
        default=None, description="Reward model (classifier, armo) or judge model (judge)."
    )
    revision: Revision | None = Field(default=None, description=REVISION_HELP)
    function: str | None = Field(
        default=None,
        description="python type: 'module:function' called as f(prompts, responses) -> floats.",
    )
    trust_remote_code: bool = Field(
        default=False, description="Remote code runs only when this is true (armo needs it)."
    )
    batch_size: int = Field(
        default=8, ge=1, le=65_536, description="Responses scored per forward pass."
    )
    max_length: int = Field(
        default=4096, ge=16, le=1_048_576, description="Tokens per scored conversation."
    )
    judge_endpoint: OpenAIEndpoint | None = Field(
        default=None,
        description="judge type (or pairwise with preference judge): ask this server instead "
        "of a local model.",
    )
    preference: PreferenceSource = Field(
        default=PreferenceSource.ranker,
        description="pairwise type: ranker (PairRM or a PairRM-style cross-encoder in model), "
        "judge (an LLM in model or judgeEndpoint) or python (function called as "
        "f(prompts, responses_a, responses_b) -> P(a beats b)).",
    )
    both_orders: bool = Field(
        default=True,
        description="pairwise type: ask every pair in both orders and average, cancelling "
        "position bias (twice the comparisons).",
    )

    @model_validator(mode="after")
    def _fields_for_type(self) -> RewardModelSpec:
        t = self.type
        defaults = type(self).model_fields
        if t != "pairwise":
            for name, key in (("preference", "preference"), ("both_orders", "bothOrders")):
                if getattr(self, name) != defaults[name].default:
                    raise ValueError(f"{key}: only type pairwise reads it (type is {t})")
        # (type, preference source) -> what it reads; the pointwise types have no source.
        kind = f"{t} with preference {self.preference}" if t == "pairwise" else str(t)
        source = self.preference if t == "pairwise" else t
        # A field set for a source that does not read it is a mistake, not a no-op.
        if self.judge_endpoint is not None and source != "judge":
            raise ValueError(
                "judgeEndpoint: only type judge, or pairwise with preference judge, reads it "
                f"(type is {kind})"
            )
        if self.function is not None and source != "python":
            raise ValueError(
                "function: only type python, or pairwise with preference python, reads it "
                f"(type is {kind})"
            )
        if source == "python":
            if not self.function:
                raise ValueError(f"function: required when type is {kind} ('module:function')")
            if parse_function_ref(self.function) is None:
                raise ValueError(
                    f"function: {self.function!r} is not of the form 'module:function' "
                    "(or 'module:Class.method')"
                )
        elif source in ("classifier", "armo", "ranker"):
            if not self.model:
                raise ValueError(f"model: required when type is {kind}")
            if t == "armo" and not self.trust_remote_code:
                raise ValueError(
                    "trustRemoteCode: armo reward models run custom code; set "
                    "trustRemoteCode: true to allow it"
                )
        elif source == "judge" and not (self.model or self.judge_endpoint):
            raise ValueError(f"model: required when type is {kind} (or set judgeEndpoint)")
        if self.revision is not None and not self.model:
            raise ValueError("revision: pins the hub revision of model; give model")
        return self


class PromptsSpec(_Model):
    source: str = Field(
        min_length=1,
        description="A .jsonl, .json, .parquet or .csv file (path or fsspec URI).",
    )
    column: str = Field(default="prompt", min_length=1, description="Column holding the prompt.")
    id_column: str | None = Field(
        default=None, description="Column holding stable prompt ids (default: derived from text)."
    )
    held_out: int = Field(
        default=0, ge=0, le=10_000_000, description="Prompts kept aside for evaluation."
    )
    limit: int | None = Field(
        default=None, ge=1, description="Use only the first N prompts of the source."
    )


class GenerationSpec(_Model):
    backend: GenerationBackend = Field(
        default=GenerationBackend.auto,
        description="auto = vllm when a GPU and vllm are present, else transformers.",
    )
    samples_per_prompt: int = Field(
        default=6,
        ge=2,
        le=1024,
        description="n responses per prompt; at least 2, since a preference pair needs two.",
    )
    temperature: float = Field(default=0.7, ge=0.0, le=5.0)
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    max_new_tokens: int = Field(default=2048, ge=1, le=1_048_576)
    shards: int = Field(default=1, ge=1, le=1024, description="Pods in the generation Indexed Job.")
    batch_size: int = Field(
        default=8, ge=1, le=65_536, description="Prompts per batch (transformers)."
    )
    truncated: Literal["keep", "drop"] = Field(
        default="keep",
        description="Responses cut at maxNewTokens: keep them, or drop them before pairing.",
    )
    system_prompt: str | None = Field(default=None, description="Optional system message.")
    endpoint: OpenAIEndpoint | None = Field(
        default=None, description="backend openai: the server that generates."
    )

    @model_validator(mode="after")
    def _endpoint_for_openai(self) -> GenerationSpec:
        if self.backend == "openai" and self.endpoint is None:
            raise ValueError("endpoint: required when backend is openai (baseUrl, model)")
        return self


class EvolverSpec(_Model):
    type: Literal["policy", "model", "openai"] = Field(
        default="policy",
        description="policy: the current policy rewrites (self-play); model: a local/hub model; "
        "openai: an OpenAI-compatible endpoint.",
    )
    model: str | None = Field(default=None, description="type model: the evolver model.")
    revision: Revision | None = Field(default=None, description=REVISION_HELP)
    endpoint: OpenAIEndpoint | None = Field(default=None, description="type openai: the server.")
    temperature: float = Field(default=0.88, ge=0.0, le=5.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(default=666, ge=1, le=1_048_576)

    @model_validator(mode="after")
    def _fields_for_type(self) -> EvolverSpec:
        if self.type == "model" and not self.model:
            raise ValueError("model: required when evolver type is model")
        if self.revision is not None and self.type != "model":
            raise ValueError(f"revision: only evolver type model reads it (type is {self.type})")
        if self.type == "openai" and self.endpoint is None:
            raise ValueError("endpoint: required when evolver type is openai")
        return self


class EvolveSpec(_Model):
    method: EvolveMethod = Field(default=EvolveMethod.evolInstruct)
    variants_per_prompt: int = Field(default=4, ge=1, le=64)
    evolver: EvolverSpec = Field(default_factory=EvolverSpec)
    near_duplicate_threshold: float = Field(
        default=0.9,
        gt=0.0,
        le=1.0,
        description="Evolved prompts whose word 3-gram Jaccard similarity to a kept prompt or "
        "their parent reaches this are dropped as near duplicates.",
    )
    min_chars: int = Field(
        default=8, ge=1, le=100_000, description="Shorter evolved prompts are dropped."
    )
    contamination_threshold: float = Field(
        default=0.7,
        gt=0.0,
        le=1.0,
        description="Evolved prompts whose word 3-gram Jaccard similarity to a held-out prompt "
        "or a benchmark question reaches this are dropped in create (reason contaminated).",
    )


class CreatorSpec(_Model):
    enabled: bool = Field(
        default=True, description="false = classic iterative DPO on the fixed prompts (baseline)."
    )
    informativeness: Informativeness = Field(default=Informativeness.gap)
    sampling: Sampling = Field(default=Sampling.importanceWeighted)
    sample_fraction: float = Field(
        default=0.25,
        description="Share of prompts kept for evolving, in (0, 1].",
        json_schema_extra={"exclusiveMinimum": 0, "maximum": 1},
    )
    evolve: EvolveSpec = Field(default_factory=EvolveSpec)
    buffer_ratio: float = Field(
        default=0.2,
        description="Share of training prompts taken from the original set (rest: evolved), "
        "in [0, 1).",
        json_schema_extra={"minimum": 0, "exclusiveMaximum": 1},
    )

    @field_validator("sample_fraction")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if not (0.0 < v <= 1.0):
            raise ValueError("must be in (0, 1]")
        return v

    @field_validator("buffer_ratio")
    @classmethod
    def _ratio(cls, v: float) -> float:
        if not (0.0 <= v < 1.0):
            raise ValueError("must be in [0, 1)")
        return v


class LoraSpec(_Model):
    enabled: bool = False
    r: int = Field(default=16, ge=1, le=4096)
    alpha: int = Field(default=32, ge=1, le=65_536)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | None = Field(default=None, description="None: all linear layers.")
    merge: bool = Field(
        default=True,
        description="true: merge adapters and save a plain model folder; false: save the adapter.",
    )


class SolverSpec(_Model):
    algorithm: Algorithm = Field(default=Algorithm.dpo)
    beta: float = Field(default=0.05, gt=0.0, le=1000.0)
    learning_rate: float = Field(default=5e-7, gt=0.0, lt=1.0)
    epochs: float = Field(default=2.0, gt=0.0, le=1000.0)
    effective_batch_size: int = Field(
        default=64, ge=1, description="Pairs per optimiser step across devices and accumulation."
    )
    per_device_batch_size: int = Field(default=2, ge=1, le=65_536)
    max_length: int = Field(default=2048, ge=16, le=1_048_576)
    warmup_ratio: float = Field(default=0.1, ge=0.0, lt=1.0)
    lr_scheduler: Literal[
        "linear",
        "cosine",
        "cosine_with_restarts",
        "polynomial",
        "constant",
        "constant_with_warmup",
        "inverse_sqrt",
    ] = Field(default="cosine", description="transformers' learning-rate schedule.")
    simpo_gamma: float = Field(
        default=0.5, ge=0.0, le=1000.0, description="SimPO target reward margin."
    )
    loss_type: Literal[DPO_LOSS_TYPES] = Field(  # type: ignore[valid-type]
        default="sigmoid",
        description="algorithm dpo: TRL's DPO loss (sigmoid = the DPO paper's). Others: "
        "hinge, robust, exo_pair, nca_pair, bco_pair, sppo_hard, aot, aot_unpaired, "
        "apo_zero, apo_down, discopop, sigmoid_norm.",
    )
    rpo_alpha: float = Field(
        default=1.0,
        gt=0.0,
        le=1000.0,
        description="algorithm rpo: weight of the chosen response's negative log-likelihood "
        "added to the DPO loss.",
    )
    label_smoothing: float = Field(
        default=0.0,
        ge=0.0,
        description="lossType robust: probability that a preference label is flipped; "
        "exo_pair: its epsilon. In [0, 0.5).",
    )
    discopop_tau: float = Field(
        default=0.05, gt=0.0, le=1000.0, description="lossType discopop: its temperature."
    )
    lora: LoraSpec = Field(default_factory=LoraSpec)
    precision: Precision = "auto"
    gradient_checkpointing: bool = False
    processes: int = Field(
        default=1, ge=1, description="Data-parallel processes under accelerate (GPUs or CPU)."
    )
    deepspeed: DeepSpeedMode = "none"

    @field_validator("label_smoothing")
    @classmethod
    def _below_half(cls, v: float) -> float:
        # Checked here, not as a schema bound: Kubernetes compares the integer default 0
        # with a fractional exclusive maximum truncated to 0 and refuses the CRD.
        if v >= 0.5:
            raise ValueError("must be less than 0.5")
        return v

    @model_validator(mode="after")
    def _loss_fields(self) -> SolverSpec:
        if self.loss_type != "sigmoid" and self.algorithm != "dpo":
            raise ValueError(
                f"lossType: {self.loss_type} is a loss of algorithm dpo (algorithm is "
                f"{self.algorithm})"
            )
        if self.label_smoothing > 0 and self.loss_type not in LABEL_SMOOTHING_LOSSES:
            raise ValueError(
                "labelSmoothing: only lossType robust or exo_pair read it (lossType is "
                f"{self.loss_type})"
            )
        # A value other than the default that nothing reads is a mistake (dumped manifests
        # carry the defaults, so the defaults themselves pass).
        defaults = type(self).model_fields
        if self.rpo_alpha != defaults["rpo_alpha"].default and self.algorithm != "rpo":
            raise ValueError(
                f"rpoAlpha: only algorithm rpo reads it (algorithm is {self.algorithm})"
            )
        if self.discopop_tau != defaults["discopop_tau"].default and self.loss_type != "discopop":
            raise ValueError(
                f"discopopTau: only lossType discopop reads it (lossType is {self.loss_type})"
            )
        return self


BENCH_SUITES = ("arena-hard", "mt-bench", "alpaca-eval")


class BenchJudgeSpec(_Model):
    """The judge of a benchmark: an OpenAI-compatible endpoint or a local model."""

    endpoint: OpenAIEndpoint | None = Field(
        default=None, description="The judge's server (baseUrl, model, apiKeyEnv/apiKeySecret)."
    )
    model: str | None = Field(
        default=None, description="A local judge model (hub id or folder) run by the backend."
    )
    revision: Revision | None = Field(default=None, description=REVISION_HELP)
    backend: Literal["auto", "transformers", "vllm"] = Field(
        default="auto", description="Backend of a local judge model."
    )
    concurrency: int = Field(default=8, ge=1, le=1024, description="Judge requests in flight.")
    timeout_s: float = Field(
        default=120.0, gt=0, le=86_400, description="Seconds per judge request."
    )
    max_retries: int = Field(
        default=5, ge=0, le=100, description="Retries (with back-off) of 429, 5xx and timeouts."
    )
    parse_retries: int = Field(
        default=2,
        ge=0,
        le=20,
        description="Extra asks when a reply has no verdict; then it is excluded and counted.",
    )
    max_new_tokens: int = Field(default=1024, ge=1, le=1_048_576, description="Judge reply.")

    @model_validator(mode="after")
    def _one(self) -> BenchJudgeSpec:
        if (self.endpoint is None) == (self.model is None):
            raise ValueError("give exactly one of endpoint (a server) or model (a local judge)")
        if self.revision is not None and self.model is None:
            raise ValueError("revision: only a local judge model reads it (give model)")
        return self


class BenchmarkSpec(_Model):
    """One benchmark run on the base policy once and on every iteration's new policy."""

    name: str | None = Field(
        default=None,
        description="Names its results (bench/<name>/score); default: the suite. Lowercase "
        "letters, digits and '-'.",
    )
    suite: Literal[BENCH_SUITES] = Field(  # type: ignore[valid-type]
        description="arena-hard (pairwise vs a baseline), mt-bench (1-10 grading, two turns), "
        "alpaca-eval (pairwise vs reference outputs)."
    )
    questions: str = Field(min_length=1, description="The suite's question file (JSONL).")
    answers: str | None = Field(
        default=None,
        description="arena-hard: the baseline's answers (required); alpaca-eval: reference "
        "outputs (default: the questions file's output fields); mt-bench: reference answers.",
    )
    judge: BenchJudgeSpec
    limit: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Only the first N questions (None: all)."
    )
    temperature: float | None = Field(
        default=None,
        ge=0.0,
        le=5.0,
        description="Answer temperature (None: 0 for arena-hard and alpaca-eval, MT-Bench's "
        "per-category temperatures for mt-bench).",
    )
    max_new_tokens: int = Field(
        default=1024, ge=1, le=1_048_576, description="Tokens per policy answer."
    )
    style_control: bool = Field(
        default=False, description="arena-hard: length and markdown counts as covariates."
    )

    @model_validator(mode="after")
    def _answers(self) -> BenchmarkSpec:
        if self.suite == "arena-hard" and not self.answers:
            raise ValueError("answers: required for arena-hard (the baseline model's answers)")
        if self.name is None:
            self.name = self.suite
        elif len(self.name) > 40 or not _DNS_LABEL.match(self.name):
            raise ValueError(
                f"name: {self.name!r} must be lowercase letters, digits and '-' (at most 40)"
            )
        return self


class EvaluationSpec(_Model):
    samples_per_prompt: int = Field(
        default=2, ge=1, le=1024, description="Responses per held-out prompt."
    )
    temperature: float | None = Field(
        default=None, ge=0.0, description="None: generation.temperature."
    )
    max_new_tokens: int | None = Field(
        default=None, ge=1, le=1_048_576, description="None: generation's."
    )
    benchmarks: list[BenchmarkSpec] = Field(
        default_factory=list,
        max_length=16,
        description="Independent judged benchmarks: a benchmark step after evaluate in every "
        "iteration (the base policy is benchmarked once, in iteration 0).",
    )

    @field_validator("benchmarks")
    @classmethod
    def _unique_names(cls, v: list[BenchmarkSpec]) -> list[BenchmarkSpec]:
        names = [b.name for b in v]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"two benchmarks are named {name!r}; give each its own name")
        return v


_QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?$"


class StepResources(_Model):
    gpus: int = Field(default=0, ge=0, le=64, description="nvidia.com/gpu per pod.")
    cpu: str | None = Field(
        default=None, pattern=_QUANTITY, description="CPU request = limit, e.g. '8' or '500m'."
    )
    memory: str | None = Field(
        default=None, pattern=_QUANTITY, description="Memory request = limit, e.g. '64Gi'."
    )


class Toleration(_Model):
    model_config = ConfigDict(extra="allow", alias_generator=to_camel, populate_by_name=True)
    key: str | None = None
    operator: str | None = None
    value: str | None = None
    effect: str | None = None


class ResourcesSpec(_Model):
    """Where and how step pods run in a cluster (ignored by ``eva run``); may change mid-run."""

    image: str | None = Field(default=None, description="Step image (default: the operator's).")
    image_pull_secrets: list[str] = Field(
        default_factory=list, description="Secret names for pulling the image."
    )
    service_account_name: str | None = Field(
        default=None, description="Step pods' service account (default: the namespace's)."
    )
    prepare: StepResources = Field(
        default_factory=StepResources, description="The once-per-run prompt preparation step."
    )
    generate: StepResources = Field(
        default_factory=lambda: StepResources(gpus=1),
        description="Per generation pod (generate and generate-evolved, each shard).",
    )
    create: StepResources = Field(default_factory=lambda: StepResources(gpus=1))
    train: StepResources = Field(default_factory=lambda: StepResources(gpus=1))
    evaluate: StepResources = Field(default_factory=lambda: StepResources(gpus=1))
    benchmark: StepResources = Field(
        default_factory=lambda: StepResources(gpus=1),
        description="The benchmark step (the policy answers; a local judge runs here too).",
    )
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    affinity: dict[str, Any] | None = Field(
        default=None, description="A Kubernetes pod affinity block, passed through as is."
    )
    priority_class_name: str | None = None
    queue_name: str | None = Field(
        default=None, description="Kueue LocalQueue (label kueue.x-k8s.io/queue-name)."
    )


class StorageSpec(_Model):
    uri: str | None = Field(
        default=None,
        description="eva run: artifact root folder (default ./eva-runs). In a cluster the "
        "root is claimName mounted at mountPath.",
    )
    claim_name: str | None = Field(
        default=None,
        description="In a cluster: the PersistentVolumeClaim (ReadWriteMany when generation is "
        "sharded) that holds artifacts (default: the operator's).",
    )
    mount_path: str = Field(
        default="/artifacts", pattern=r"^/", description="Where step pods mount the claim."
    )
    model_cache_claim: str | None = Field(
        default=None,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="In a cluster: the PersistentVolumeClaim (ReadWriteMany) that holds the "
        "hub models step pods load, shared by runs (default: the operator's; none: a cache "
        "folder on the artifact claim). Each model is downloaded once into it.",
    )


class Credentials(_Model):
    """Secrets that step pods receive as environment variables (cluster only)."""

    hub_token: SecretKeyRef | None = Field(
        default=None, description="Hugging Face token, as HF_TOKEN (gated models)."
    )
    mlflow_token: SecretKeyRef | None = Field(
        default=None, description="MLflow bearer token, as MLFLOW_TRACKING_TOKEN."
    )
    mlflow_username: SecretKeyRef | None = Field(
        default=None, description="MLflow basic auth user, as MLFLOW_TRACKING_USERNAME."
    )
    mlflow_password: SecretKeyRef | None = Field(
        default=None, description="MLflow basic auth password, as MLFLOW_TRACKING_PASSWORD."
    )


class MlflowSpec(_Model):
    tracking_uri: str | None = None
    experiment: str | None = None
    register_model: bool = True


class TrackingSpec(_Model):
    mlflow: MlflowSpec = Field(default_factory=MlflowSpec)


class RunPolicy(_Model):
    """How the operator runs the steps (ignored by ``eva run``); may change mid-run."""

    backoff_limit: int = Field(
        default=2, ge=0, le=100, description="Retries of a failed step before the run fails."
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="The whole run fails when it runs longer than this."
    )
    pending_deadline_seconds: int | None = Field(
        default=600,
        ge=1,
        description="A step pod Pending this long (unschedulable, image pull errors) fails the "
        "run with the pod's reason. None waits forever (e.g. behind a queue).",
    )
    suspend: bool = Field(
        default=False,
        description="true stops the running step's Job; false resumes at the same step.",
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None, ge=0, description="Finished step Jobs are deleted after this long."
    )


# Variables the operator sets in every step pod (an endpoint's apiKeyEnv may not reuse them).
STEP_ENV = frozenset(
    {
        "HOME",
        "XDG_CACHE_HOME",
        "HF_HOME",
        "HF_HUB_OFFLINE",
        "TRITON_CACHE_DIR",
        "MLFLOW_TRACKING_URI",
        "JOB_COMPLETION_INDEX",
        "PATH",
    }
)


class ModelRef(NamedTuple):
    """A model the run loads: where the spec names it, the reference, its pinned revision."""

    field: str  # e.g. "policy.model"
    ref: str
    revision: str | None

    @property
    def revision_field(self) -> str:
        return self.field.rsplit(".", 1)[0] + ".revision"


class EvaRunSpec(_Model):
    iterations: int = Field(default=3, ge=1, le=1000)
    seed: int = Field(default=42, ge=0, le=2**32 - 1)
    policy: PolicySpec
    reward_model: RewardModelSpec
    prompts: PromptsSpec
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    creator: CreatorSpec = Field(default_factory=CreatorSpec)
    solver: SolverSpec = Field(default_factory=SolverSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    credentials: Credentials = Field(default_factory=Credentials)
    run_policy: RunPolicy = Field(default_factory=RunPolicy)

    def model_refs(self) -> list[ModelRef]:
        """Every model the run loads itself (not through a server), with its field path: the
        one list for the runner's preflight and the download of hub models."""
        found = [ModelRef("policy.model", self.policy.model, self.policy.revision)]
        rm = self.reward_model
        source = rm.preference if rm.type == "pairwise" else rm.type
        if rm.model and (
            source in ("classifier", "armo", "ranker")
            or (source == "judge" and rm.judge_endpoint is None)
        ):
            found.append(ModelRef("rewardModel.model", rm.model, rm.revision))
        ev = self.creator.evolve.evolver
        if self.creator.enabled and ev.type == "model" and ev.model:
            found.append(ModelRef("creator.evolve.evolver.model", ev.model, ev.revision))
        for i, b in enumerate(self.evaluation.benchmarks):
            if b.judge.model:
                found.append(
                    ModelRef(
                        f"evaluation.benchmarks[{i}].judge.model", b.judge.model, b.judge.revision
                    )
                )
        return found

    def endpoints(self) -> list[tuple[str, OpenAIEndpoint]]:
        """Every OpenAI-compatible server the spec names, with its field path (one list for
        the secrets check, the step pods' environment and the runner's preflight)."""
        found: list[tuple[str, OpenAIEndpoint | None]] = [
            ("generation.endpoint", self.generation.endpoint),
            ("creator.evolve.evolver.endpoint", self.creator.evolve.evolver.endpoint),
            ("rewardModel.judgeEndpoint", self.reward_model.judge_endpoint),
        ]
        for i, b in enumerate(self.evaluation.benchmarks):
            found.append((f"evaluation.benchmarks[{i}].judge.endpoint", b.judge.endpoint))
        return [(where, ep) for where, ep in found if ep is not None]

    @model_validator(mode="after")
    def _one_secret_per_env(self) -> EvaRunSpec:
        seen: dict[str, tuple[str, SecretKeyRef]] = {}
        reserved = STEP_ENV | {
            "HF_TOKEN",
            "MLFLOW_TRACKING_TOKEN",
            "MLFLOW_TRACKING_USERNAME",
            "MLFLOW_TRACKING_PASSWORD",
        }
        for where, ep in self.endpoints():
            if ep.api_key_secret is None or ep.api_key_env is None:
                continue
            if ep.api_key_env in reserved or ep.api_key_env.startswith("EVA_"):
                raise ValueError(
                    f"{where}.apiKeyEnv: {ep.api_key_env} is set by the operator in step pods; "
                    "choose another name (e.g. OPENAI_API_KEY)"
                )
            prior = seen.get(ep.api_key_env)
            if prior is not None and prior[1] != ep.api_key_secret:
                raise ValueError(
                    f"{where}.apiKeySecret: {prior[0]} fills {ep.api_key_env} from another "
                    "Secret; give one of them its own apiKeyEnv"
                )
            seen[ep.api_key_env] = (where, ep.api_key_secret)
        return self


class Metadata(_Model):
    """Kubernetes ObjectMeta: a run's name and namespace, and what the API server keeps about
    the object (any other key is a typo and refused)."""

    name: str
    namespace: str = "default"
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    generate_name: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    generation: int | None = None
    creation_timestamp: str | None = None
    deletion_timestamp: str | None = None
    deletion_grace_period_seconds: int | None = None
    finalizers: list[str] | None = None
    owner_references: list[dict[str, Any]] | None = None
    managed_fields: list[dict[str, Any]] | None = None
    self_link: str | None = None

    @field_validator("name", "namespace")
    @classmethod
    def _dns(cls, v: str) -> str:
        if len(v) > 63 or not _DNS_LABEL.match(v):
            raise ValueError(
                "must be a DNS label: lowercase letters, digits and '-', at most 63 characters"
            )
        return v


class EvaRun(_Model):
    api_version: Literal["eva.dev/v1alpha1"]
    kind: Literal["EvaRun"]
    metadata: Metadata
    spec: EvaRunSpec
    status: dict[str, Any] | None = Field(
        default=None, description="Written by the operator; ignored by the runtime."
    )

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace


def sharded(step: str) -> bool:
    """Whether ``step`` runs as ``generation.shards`` shards."""
    return step in GENERATION_STEPS


def steps_for(creator_enabled: bool, benchmarks: bool = False) -> tuple[str, ...]:
    """The steps of one iteration, in order; without the creator, the classic baseline;
    with ``benchmarks`` (``evaluation.benchmarks`` is not empty), the benchmark step last."""
    steps = STEPS if creator_enabled else ("generate", "train", "evaluate")
    return (*steps, BENCHMARK) if benchmarks else steps


def iteration_steps(spec: EvaRunSpec) -> tuple[str, ...]:
    """The steps of one iteration of ``spec``, in order."""
    return steps_for(spec.creator.enabled, bool(spec.evaluation.benchmarks))


# --------------------------------------------------------------------------- loading


class SpecError(ValueError):
    """A manifest that cannot run: carries every problem found, each with its field path."""

    def __init__(self, source: str, errors: list[str]):
        self.source = source
        self.errors = errors
        super().__init__(f"{source}: invalid EvaRun\n" + "\n".join(f"  {e}" for e in errors))


def _path(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _friendly(err: dict[str, Any]) -> str:
    """Turn one pydantic error into 'field.path: rule' in the manifest's own spelling."""
    loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-after"))]
    msg: str = err["msg"]
    etype = err["type"]
    ctx = err.get("ctx") or {}
    if etype == "value_error":
        msg = msg.removeprefix("Value error, ")
        # Validators on a whole section name the field themselves: 'field: rule'.
        head, sep, rest = msg.partition(": ")
        if sep and " " not in head:
            loc = [*loc, head]
            msg = rest
    elif etype == "missing":
        msg = "required field is missing"
    elif etype == "extra_forbidden":
        msg = "unknown field (check the spelling; keys are camelCase)"
    elif etype == "literal_error" or etype == "enum":
        msg = f"must be one of {ctx.get('expected', '')}".rstrip()
    elif etype in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        msg = msg.replace("Input should be", "must be")
    else:
        msg = msg.replace("Input should be", "must be")
    return f"{_path(loc)}: {msg}"


def parse_run(doc: Any, source: str = "<manifest>") -> EvaRun:
    """Validate one manifest (a dict); raise SpecError listing every problem at once."""
    if not isinstance(doc, dict):
        raise SpecError(source, ["(root): must be a mapping with apiVersion, kind, metadata, spec"])
    problems: list[str] = []
    if doc.get("apiVersion") != API_VERSION:
        problems.append(f"apiVersion: must be {API_VERSION} (got {doc.get('apiVersion')!r})")
    if doc.get("kind") != KIND:
        problems.append(f"kind: must be {KIND} (got {doc.get('kind')!r})")
    try:
        run = EvaRun.model_validate(doc)
    except ValidationError as exc:
        for err in exc.errors():
            if err["loc"] and err["loc"][0] in ("apiVersion", "kind"):
                continue
            problems.append(_friendly(err))  # type: ignore[arg-type]
        raise SpecError(source, problems) from None
    if problems:
        raise SpecError(source, problems)
    return run


def load_runs(path: str | Path) -> list[EvaRun]:
    """Every EvaRun in a YAML file (other kinds in a multi-document file are ignored)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(str(path), ["file not found"]) from None
    except UnicodeDecodeError as exc:
        raise SpecError(str(path), [f"not UTF-8 text (byte {exc.start})"]) from None
    from eva_runtime import safe_yaml

    try:
        docs = [d for d in safe_yaml.load_all(text) if d is not None]
    except safe_yaml.YamlError as exc:
        raise SpecError(str(path), [str(exc)]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise SpecError(
            str(path), [f"{where}not valid YAML ({getattr(exc, 'problem', exc)})"]
        ) from None
    runs: list[EvaRun] = []
    errors: list[str] = []
    candidates = [d for d in docs if not isinstance(d, dict) or d.get("kind", KIND) == KIND]
    if not candidates:
        kinds = [d.get("kind") for d in docs if isinstance(d, dict)]
        near = [k for k in kinds if isinstance(k, str) and k.lower() == KIND.lower()]
        if near:
            raise SpecError(str(path), [f"kind: must be {KIND} (got {near[0]!r}; case matters)"])
        found = f" (kinds found: {', '.join(map(repr, kinds))})" if kinds else ""
        raise SpecError(str(path), [f"no EvaRun document in the file{found}"])
    for i, doc in enumerate(candidates):
        label = str(path) if len(candidates) == 1 else f"{path} (document {i + 1})"
        try:
            runs.append(parse_run(doc, label))
        except SpecError as exc:
            prefix = "" if len(candidates) == 1 else f"document {i + 1}: "
            errors.extend(prefix + e for e in exc.errors)
    if errors:
        raise SpecError(str(path), errors)
    return runs


def load_run(path: str | Path) -> EvaRun:
    runs = load_runs(path)
    if len(runs) != 1:
        raise SpecError(str(path), [f"expected one EvaRun, found {len(runs)}"])
    return runs[0]


# Sections that decide only where and how steps run, not what they compute: they may change
# while a run is under way. Every other spec field is fixed once the run has started.
MUTABLE_FIELDS = ("spec.iterations", "spec.resources", "spec.runPolicy", "spec.credentials")


def mutable_fields_text() -> str:
    """``MUTABLE_FIELDS`` as a phrase for messages."""
    return ", ".join(MUTABLE_FIELDS[:-1]) + " and " + MUTABLE_FIELDS[-1]


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as ``{"a.b.c": leaf}`` (an empty mapping is a leaf): how specs are
    compared, recorded as MLflow params and shown side by side."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def spec_changes(old: EvaRun, new: EvaRun) -> list[str]:
    """The fields (camelCase paths) that differ and may not change under a started run."""
    a = flatten(old.spec.model_dump(by_alias=True, mode="json"), "spec")
    b = flatten(new.spec.model_dump(by_alias=True, mode="json"), "spec")

    def mutable(key: str) -> bool:
        return any(key == m or key.startswith(m + ".") for m in MUTABLE_FIELDS)

    return [k for k in sorted(set(a) | set(b)) if not mutable(k) and a.get(k) != b.get(k)]


def dump_run(run: EvaRun) -> str:
    """The manifest as YAML with camelCase keys (what a Job's pod receives)."""
    data = run.model_dump(by_alias=True, exclude_none=True, mode="json")
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml when present: ~10x faster
    return str(yaml.dump(data, Dumper=dumper, sort_keys=False, allow_unicode=False))
