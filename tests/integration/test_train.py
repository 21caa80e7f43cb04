"""Preference training of the solver on a tiny random Llama, for real, on CPU.

The tiny model cannot learn anything useful, but it can be pushed towards a fixed kind
of answer within a few steps at a high learning rate, which is enough to tell whether
the pairs, the chat template, the loss and the saved folder are wired up correctly.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))

from eva_runtime.solver import launch as launch_mod
from eva_runtime.solver import settings as settings_mod
from eva_runtime.solver import trainer as trainer_mod
from eva_runtime.solver.train import (
    LoraSettings,
    TrainResult,
    TrainSettings,
    train_policy,
)
from tiny_model import build_tiny_model

CHOSEN = "Paris is the capital of France."
REJECTED = "The quick brown fox jumps over the lazy dog 0123456789."

PAIRS = [
    {
        "prompt": f"Question {i}: what is the capital of France? Answer briefly.",
        "chosen": CHOSEN,
        "rejected": REJECTED,
    }
    for i in range(8)
]

# A few optimiser steps that visibly move a random model: high learning rate, no warmup
# (a warmup step would run at learning rate 0 and waste a third of a short run).
FAST = TrainSettings(
    learning_rate=1e-3,
    epochs=1.0,
    per_device_batch_size=4,
    warmup_ratio=0.0,
    beta=0.1,
    max_length=128,
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _force_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take the CPU (gloo) path even where a GPU is visible: in here and in the workers."""
    import torch

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture(scope="module")
def start_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("start") / "policy", seed=0)


def _weights(model_dir: Path | str) -> dict[str, Any]:
    """Load the folder the way the next iteration would, and return its weights."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _max_difference(a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _response_logprob(model: Any, tokenizer: Any, prompt: str, response: str) -> float:
    """Sum of log p(response tokens | chat-formatted prompt), computed independently of TRL."""
    import torch

    user = [{"role": "user", "content": prompt}]
    prefix = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(
        [*user, {"role": "assistant", "content": response}], tokenize=False
    )
    assert full.startswith(prefix)
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    assert full_ids[: len(prefix_ids)] == prefix_ids
    ids = torch.tensor([full_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    targets = ids[0, 1:]
    picked = logprobs[torch.arange(len(targets)), targets]
    return float(picked[len(prefix_ids) - 1 :].sum())


def _mean_margin(model_dir: Path | str, pairs: Sequence[Mapping[str, str]]) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    margins = [
        _response_logprob(model, tokenizer, p["prompt"], p["chosen"])
        - _response_logprob(model, tokenizer, p["prompt"], p["rejected"])
        for p in pairs
    ]
    return sum(margins) / len(margins)


def _assert_finite_history(result: TrainResult) -> None:
    assert result.history, "no training step was logged"
    for record in result.history:
        assert isinstance(record["loss"], float) and math.isfinite(record["loss"])
        assert isinstance(record["step"], int)
        assert {"learning_rate", "epoch"} <= record.keys()


def test_dpo_increases_the_chosen_margin(start_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "iter-1"
    # A previous crashed attempt may have left both of these behind.
    (tmp_path / "iter-1.tmp").mkdir()
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier run")
    logged: list[dict] = []
    settings = TrainSettings(
        algorithm="dpo",
        learning_rate=1e-3,
        epochs=3.0,
        per_device_batch_size=4,
        beta=0.1,
        max_length=128,
    )

    result = train_policy(
        PAIRS,
        model_path=str(start_model),
        output_dir=str(out),
        settings=settings,
        on_log=logged.append,
    )

    before = _mean_margin(start_model, PAIRS)
    after = _mean_margin(out, PAIRS)
    assert after > before + 1.0, (before, after)
    assert result.model_dir == str(out)
    assert result.num_pairs == len(PAIRS)
    assert result.steps == 6  # 8 pairs / batch 4 * 3 epochs
    assert result.train_loss is not None and math.isfinite(result.train_loss)
    _assert_finite_history(result)
    assert "rewards/accuracies" in result.history[-1]
    assert result.reward_accuracy == result.history[-1]["rewards/accuracies"]
    assert result.history[-1]["loss"] < math.log(2)  # sigmoid DPO starts at log 2
    assert len(logged) >= len(result.history)
    json.dumps(result.history)  # plain floats only
    assert not (out / "stale.txt").exists()
    assert not (tmp_path / "iter-1.tmp").exists()
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(out)).chat_template is not None


@pytest.mark.parametrize("algorithm", ["ipo", "simpo", "orpo"])
def test_other_algorithms_train_and_save(start_model: Path, tmp_path: Path, algorithm: str) -> None:
    out = tmp_path / algorithm
    settings = TrainSettings(**{**_fields(FAST), "algorithm": algorithm})

    result = train_policy(
        PAIRS, model_path=str(start_model), output_dir=str(out), settings=settings
    )

    assert result.steps == 2
    _assert_finite_history(result)
    assert _max_difference(_weights(out), _weights(start_model)) > 1e-5


def test_lora_merged_is_a_plain_folder(start_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "merged"
    settings = TrainSettings(**{**_fields(FAST), "lora": LoraSettings(r=4, alpha=8, merge=True)})

    train_policy(PAIRS, model_path=str(start_model), output_dir=str(out), settings=settings)

    assert not (out / "adapter_config.json").exists()
    assert (out / "config.json").exists()
    assert _max_difference(_weights(out), _weights(start_model)) > 1e-6


def test_lora_unmerged_saves_an_adapter(start_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "adapter"
    lora = LoraSettings(r=4, alpha=8, target_modules=("q_proj", "v_proj"), merge=False)
    settings = TrainSettings(**{**_fields(FAST), "lora": lora})

    train_policy(PAIRS, model_path=str(start_model), output_dir=str(out), settings=settings)

    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(start_model)
    assert set(adapter_config["target_modules"]) == {"q_proj", "v_proj"}
    from peft import AutoPeftModelForCausalLM

    model = AutoPeftModelForCausalLM.from_pretrained(str(out))
    lora_b = [v for k, v in model.state_dict().items() if "lora_B" in k]
    assert lora_b and max(float(v.abs().max()) for v in lora_b) > 0  # B starts at zero


def test_dpo_reference_is_the_start_policy(
    start_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The policy object's name_or_path points at another model; the reference must not."""
    decoy = build_tiny_model(tmp_path / "decoy", seed=1)
    load = trainer_mod._load_causal_lm

    def load_with_foreign_name(path: str, dtype: Any) -> Any:
        model = load(path, dtype)
        model.config._name_or_path = str(decoy)
        model.name_or_path = str(decoy)
        return model

    monkeypatch.setattr(trainer_mod, "_load_causal_lm", load_with_foreign_name)
    trainer = trainer_mod._build_trainer(
        PAIRS, model_path=str(start_model), settings=FAST, scratch_dir=str(tmp_path / "scratch")
    )

    reference = trainer.accelerator.unwrap_model(trainer.ref_model)
    ref_weights = {k: v.detach() for k, v in reference.state_dict().items()}
    assert _max_difference(ref_weights, _weights(start_model)) == 0.0
    assert _max_difference(_weights(decoy), _weights(start_model)) > 1e-3
    assert not any(p.requires_grad for p in reference.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["dpo", "sppo"])
def test_two_cpu_processes_train_and_save(
    start_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, algorithm: str
) -> None:
    """Data-parallel under accelerate; sppo's probabilities travel to the workers and its
    reference log-probabilities are precomputed on both ranks."""
    _force_cpu(monkeypatch)
    out = tmp_path / "ddp"
    logged: list[dict] = []
    settings = TrainSettings(
        **{**_fields(FAST), "num_processes": 2, "per_device_batch_size": 2, "algorithm": algorithm}
    )

    result = train_policy(
        PAIRS if algorithm == "dpo" else _with_probs(PAIRS, 0.8, 0.3),
        model_path=str(start_model),
        output_dir=str(out),
        settings=settings,
        on_log=logged.append,
    )

    # 8 pairs over 2 ranks x 2 per rank: 2 optimiser steps, each over the global batch.
    assert result.steps == 2
    assert result.num_pairs == len(PAIRS)
    _assert_finite_history(result)
    assert [r["step"] for r in logged if "loss" in r] == [1, 2]
    assert _max_difference(_weights(out), _weights(start_model)) > 1e-5


@pytest.mark.slow
def test_failed_launch_reports_worker_stderr(
    start_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _force_cpu(monkeypatch)
    # Loads fine up to the point where the worker finds nothing to format pairs with.
    broken = tmp_path / "no-template"
    shutil.copytree(start_model, broken)
    (broken / "chat_template.jinja").unlink()
    settings = TrainSettings(**{**_fields(FAST), "num_processes": 2})

    with pytest.raises(RuntimeError, match="has no chat template"):
        train_policy(
            PAIRS,
            model_path=str(broken),
            output_dir=str(tmp_path / "out"),
            settings=settings,
        )
    assert not (tmp_path / "out").exists()


def test_missing_start_folder_fails_before_launching(tmp_path: Path) -> None:
    settings = TrainSettings(**{**_fields(FAST), "num_processes": 2})
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        train_policy(
            PAIRS,
            model_path=str(tmp_path / "nothing"),
            output_dir=str(tmp_path / "out"),
            settings=settings,
        )


def test_empty_pairs_are_rejected(start_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one preference pair"):
        train_policy([], model_path=str(start_model), output_dir=str(tmp_path), settings=FAST)


def test_malformed_pairs_and_settings_are_rejected(start_model: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'rejected'"):
        train_policy(
            [{"prompt": "p", "chosen": "c"}],
            model_path=str(start_model),
            output_dir=str(tmp_path),
            settings=FAST,
        )
    with pytest.raises(ValueError, match="algorithm"):
        TrainSettings(algorithm="ppo")
    roundtrip = settings_mod.settings_from_dict(
        json.loads(
            json.dumps(
                settings_mod.settings_to_dict(
                    TrainSettings(lora=LoraSettings(target_modules=("q_proj",)))
                )
            )
        )
    )
    assert roundtrip == TrainSettings(lora=LoraSettings(target_modules=("q_proj",)))


def test_zero3_launch_config_is_accepted_by_accelerate(tmp_path: Path) -> None:
    """ZeRO-3 needs GPUs to run; here only its generated launch config is checked."""
    from accelerate.commands.config.config_args import ClusterConfig

    settings = TrainSettings(num_processes=4, deepspeed="zero3")
    path = tmp_path / "accelerate.json"
    path.write_text(json.dumps(launch_mod._accelerate_config(settings, "bf16")))
    config = ClusterConfig.from_json_file(json_file=str(path))
    assert config.distributed_type == "DEEPSPEED"
    assert config.num_processes == 4 and config.mixed_precision == "bf16"
    assert config.deepspeed_config["zero_stage"] == 3
    assert config.deepspeed_config["zero3_save_16bit_model"] is True


def _fields(settings: TrainSettings) -> dict[str, Any]:
    return {f: getattr(settings, f) for f in settings.__dataclass_fields__}


@pytest.mark.parametrize(
    ("algorithm", "extra"),
    [
        ("rpo", {"rpo_alpha": 1.0}),
        ("dpo", {"loss_type": "robust", "label_smoothing": 0.1}),
        ("dpo", {"loss_type": "bco_pair"}),
        ("dpo", {"loss_type": "apo_zero"}),
        ("dpo", {"loss_type": "nca_pair"}),
        ("dpo", {"loss_type": "aot"}),
        ("dpo", {"loss_type": "sppo_hard"}),
    ],
    ids=["rpo", "robust", "bco_pair", "apo_zero", "nca_pair", "aot", "sppo_hard"],
)
def test_rpo_and_dpo_loss_types_raise_the_chosen_margin(
    start_model: Path, tmp_path: Path, algorithm: str, extra: dict
) -> None:
    """Each trains for real and saves a policy the next iteration can start from; on the
    eight pairs the chosen response gains on the rejected one."""
    out = tmp_path / "policy"
    settings = TrainSettings(
        algorithm=algorithm,
        learning_rate=1e-3,
        epochs=3.0,
        per_device_batch_size=4,
        beta=0.1,
        max_length=128,
        **extra,
    )
    result = train_policy(
        PAIRS, model_path=str(start_model), output_dir=str(out), settings=settings
    )
    _assert_finite_history(result)
    assert result.steps == 6
    assert _mean_margin(out, PAIRS) > _mean_margin(start_model, PAIRS)
    again = train_policy(
        PAIRS[:4], model_path=str(out), output_dir=str(tmp_path / "next"), settings=settings
    )
    assert again.steps >= 1


def test_discopop_trains_and_saves(start_model: Path, tmp_path: Path) -> None:
    """DiscoPOP's loss is not monotone in the margin (its log-ratio modulation): on these
    eight pairs it does not raise the chosen margin, so only training and saving are checked."""
    settings = TrainSettings(**{**_fields(FAST), "loss_type": "discopop", "discopop_tau": 0.05})
    out = tmp_path / "discopop"
    result = train_policy(
        PAIRS, model_path=str(start_model), output_dir=str(out), settings=settings
    )
    _assert_finite_history(result)
    assert _max_difference(_weights(out), _weights(start_model)) > 1e-5


def test_rpo_adds_the_chosen_nll_to_the_dpo_loss(start_model: Path, tmp_path: Path) -> None:
    """At the first step policy = reference, so DPO's loss is ln 2 and RPO's exceeds it by
    alpha times the chosen responses' NLL (positive): a larger alpha, a larger first loss."""
    first = {}
    for alpha in (0.5, 2.0):
        settings = TrainSettings(
            algorithm="rpo", rpo_alpha=alpha, learning_rate=1e-6, epochs=1.0,
            per_device_batch_size=8, beta=0.1, max_length=128,
        )  # fmt: skip
        result = train_policy(
            PAIRS, model_path=str(start_model), output_dir=str(tmp_path / f"a{alpha}"),
            settings=settings,
        )  # fmt: skip
        first[alpha] = result.history[0]["loss"]
    assert first[0.5] > math.log(2)
    assert first[2.0] > first[0.5] + 1.0


def _with_probs(pairs: Sequence[Mapping[str, str]], chosen: float, rejected: float) -> list[dict]:
    return [{**p, "chosen_prob": chosen, "rejected_prob": rejected} for p in pairs]


def test_sppo_trains_towards_the_soft_win_probabilities(start_model: Path, tmp_path: Path) -> None:
    """At the first step policy = reference, so SPPO's loss is exactly
    (1/beta)^2 ((P_w - 1/2)^2 + (P_l - 1/2)^2): 13 for beta 0.1, P 0.8 / 0.3, where TRL's
    sppo_hard (P = 1 / 0) gives 50. Then it trains, raises the chosen margin, and the saved
    policy starts the next iteration."""
    first = TrainSettings(
        algorithm="sppo", learning_rate=1e-6, epochs=1.0, per_device_batch_size=8,
        beta=0.1, max_length=128, warmup_ratio=0.0,
    )  # fmt: skip
    soft = train_policy(
        _with_probs(PAIRS, 0.8, 0.3), model_path=str(start_model),
        output_dir=str(tmp_path / "soft"), settings=first,
    )  # fmt: skip
    assert soft.history[0]["loss"] == pytest.approx(100 * (0.3**2 + 0.2**2), rel=1e-4)
    hard = train_policy(
        _with_probs(PAIRS, 1.0, 0.0), model_path=str(start_model),
        output_dir=str(tmp_path / "hard"), settings=first,
    )  # fmt: skip
    assert hard.history[0]["loss"] == pytest.approx(50.0, rel=1e-4)
    assert soft.reward_accuracy is None  # logged rewards are of shifted log-ratios

    settings = TrainSettings(
        algorithm="sppo", learning_rate=1e-3, epochs=3.0, per_device_batch_size=4,
        beta=0.1, max_length=128,
    )  # fmt: skip
    out = tmp_path / "policy"
    result = train_policy(
        _with_probs(PAIRS, 0.8, 0.3), model_path=str(start_model), output_dir=str(out),
        settings=settings,
    )  # fmt: skip
    _assert_finite_history(result)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0]
    assert _mean_margin(out, PAIRS) > _mean_margin(start_model, PAIRS)
    again = train_policy(
        _with_probs(PAIRS[:4], 0.6, 0.4), model_path=str(out),
        output_dir=str(tmp_path / "next"), settings=settings,
    )  # fmt: skip
    assert again.steps >= 1


def test_sppo_needs_the_probabilities_and_refuses_bad_ones(
    start_model: Path, tmp_path: Path
) -> None:
    settings = TrainSettings(algorithm="sppo", max_length=128)
    with pytest.raises(ValueError, match="pair 0 has no"):
        train_policy(PAIRS, model_path=str(start_model), output_dir=str(tmp_path / "o"),
                     settings=settings)  # fmt: skip
    with pytest.raises(ValueError, match=r"pair 0: 'chosen_prob' must be a probability.*1\.5"):
        train_policy(_with_probs(PAIRS, 1.5, 0.2), model_path=str(start_model),
                     output_dir=str(tmp_path / "o"), settings=settings)  # fmt: skip


def test_loss_fields_that_do_not_fit_the_algorithm_are_refused() -> None:
    with pytest.raises(ValueError, match="loss of algorithm dpo"):
        TrainSettings(algorithm="ipo", loss_type="robust")
    with pytest.raises(ValueError, match="labelSmoothing"):
        TrainSettings(loss_type="hinge", label_smoothing=0.1)
    with pytest.raises(ValueError, match="loss_type: Input should be"):
        TrainSettings(loss_type="magic")


def test_two_trainings_in_threads_of_one_process_both_succeed(
    start_model: Path, tmp_path: Path
) -> None:
    """accelerate's state is process-wide (a finishing trainer resets it) and TRL's lazy
    imports race between threads: trainings in threads of one process (library callers, the
    tests' in-process step pods) take turns instead of breaking each other."""
    import threading

    errors: list[BaseException] = []
    results: list[TrainResult] = []

    def train(name: str, epochs: float) -> None:
        try:
            settings = TrainSettings(**{**_fields(FAST), "epochs": epochs})
            results.append(
                train_policy(
                    PAIRS,
                    model_path=str(start_model),
                    output_dir=str(tmp_path / name),
                    settings=settings,
                )
            )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=train, args=(n, e)) for n, e in (("a", 1.0), ("b", 2.0))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    assert sorted(r.steps for r in results) == [2, 4]
