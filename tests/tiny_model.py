"""A tiny, real causal LM with a locally trained tokenizer, built in seconds.

Tests use it wherever a model has to run for real (generation, scoring, DPO) but its
quality does not matter. Nothing is downloaded: the tokenizer is trained here on a
small built-in corpus and the weights are random.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "Write a short poem about the sea and the wind.",
    "Explain why the sky is blue in two sentences.",
    "List three uses of a paper clip.",
    "What is the capital of France? Answer briefly.",
    "Summarise the plot of a detective story in one paragraph.",
    "Give me a recipe for a simple tomato soup.",
    "Rewrite the instruction so that it is harder and requires reasoning.",
    "Add a constraint: the answer must be under fifty words.",
    "Describe a cat, a dog and a bird, and compare them.",
    "Translate 'good morning' into Spanish, French and German.",
    "Solve: if x + 3 = 7, what is x? Show your steps.",
    "The quick brown fox jumps over the lazy dog 0123456789.",
]


def build_tiny_model(path: str | Path, *, seed: int = 0, vocab_size: int = 384) -> Path:
    """Write a random 2-layer Llama and its tokenizer to ``path``; return the path."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token=None,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = fast.eos_token_id
    model.generation_config.pad_token_id = fast.pad_token_id
    model.save_pretrained(path)
    return path


def build_tiny_classifier(path: str | Path, *, seed: int = 1) -> Path:
    """A random 1-label sequence classifier sharing the tiny tokenizer (a reward model)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    path = Path(path)
    lm_dir = build_tiny_model(path, seed=seed)
    tok = AutoTokenizer.from_pretrained(lm_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        num_labels=1,
    )
    LlamaForSequenceClassification(config).save_pretrained(path)
    return path


RANKER_TAGS = ["<|source|>", "<|candidate1|>", "<|candidate2|>"]


def _tiny_deberta(path: Path, seed: int) -> tuple[Any, dict[str, Any]]:
    """The tiny tokenizer plus the ranker tags at ``path`` (no weights yet), and the
    arguments of a 2-layer DeBERTa-v2 config over it."""
    from transformers import AutoTokenizer

    build_tiny_model(path, seed=seed)
    for name in ("model.safetensors", "config.json", "generation_config.json"):
        (path / name).unlink()
    tok = AutoTokenizer.from_pretrained(path)
    tok.add_special_tokens({"additional_special_tokens": RANKER_TAGS})
    tok.save_pretrained(path)
    config = {
        "vocab_size": len(tok),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 512,
        "pad_token_id": tok.pad_token_id,
        "initializer_range": 0.5,  # preferences that vary with the input, not all ~0.5
    }
    return tok, config


def build_tiny_ranker(path: str | Path, *, seed: int = 2) -> Path:
    """A random PairRM-style cross-encoder: a 2-layer DeBERTa-v2 (PairRM's architecture)
    with one logit, over the tiny tokenizer plus the ranker's three tags."""
    import torch
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    path = Path(path)
    _tok, args = _tiny_deberta(path, seed)
    config = DebertaV2Config(**args, num_labels=1)
    torch.manual_seed(seed)
    DebertaV2ForSequenceClassification(config).save_pretrained(path)
    return path


def build_tiny_pairrm(path: str | Path, *, seed: int = 4, n_tasks: int = 3) -> Path:
    """A random checkpoint in PairRM's layout (as llm-blender/PairRM-hf ships it): config
    architectures ``DebertaV2PairRM`` with the tag ids, weights ``pretrained_model.*`` (a
    DeBERTa-v2 encoder) and ``head_layer.{1,4}.*`` (the two linear layers of its head),
    written tensor by tensor, not through eva's loader."""
    import torch
    from safetensors.torch import save_file
    from transformers import DebertaV2Config, DebertaV2Model

    path = Path(path)
    tok, args = _tiny_deberta(path, seed)
    source, cand1, cand2 = tok.convert_tokens_to_ids(RANKER_TAGS)
    config = DebertaV2Config(
        **args,
        architectures=["DebertaV2PairRM"],
        n_tasks=n_tasks,
        drop_out=0.05,
        source_prefix_id=source,
        cand1_prefix_id=cand1,
        cand2_prefix_id=cand2,
        cand_prefix_id=cand1,
    )
    torch.manual_seed(seed)
    encoder = DebertaV2Model(config)
    tensors = {f"pretrained_model.{k}": v.contiguous() for k, v in encoder.state_dict().items()}
    tensors["head_layer.1.weight"] = torch.randn(32, 64) * 0.3
    tensors["head_layer.1.bias"] = torch.randn(32) * 0.1
    tensors["head_layer.4.weight"] = torch.randn(n_tasks, 32) * 0.3
    tensors["head_layer.4.bias"] = torch.randn(n_tasks) * 0.1
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(path)
    return path
