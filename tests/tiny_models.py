"""Tiny randomly initialised causal LMs with a real tokenizer and chat template.

Built offline in about a second: a byte-level BPE tokenizer trained on a few
sentences, and a model of each family from its transformers config with a few
thousand parameters. They generate nonsense, deterministically, which is all the
engine, registry and job tests need.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "What is the capital of France? The capital of France is Paris.",
    "Answer with one word. Yes. No. Red, green, blue and yellow are colours.",
    "Write a short story about a cat who learns to swim in the sea.",
    "def add(a, b):\n    return a + b\n",
    "List three fruits: apple, banana, cherry. Explain why the sky is blue.",
] * 20
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_tokenizer(out_dir: Path) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    fast.save_pretrained(out_dir)
    return fast


def family_config(family: str, vocab_size: int, eos: int, pad: int) -> Any:
    """A config a few thousand parameters big for one model family."""
    import transformers as t

    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        eos_token_id=eos,
        pad_token_id=pad,
        bos_token_id=eos,
    )
    if family == "llama":
        return t.LlamaConfig(num_key_value_heads=2, **common)
    if family == "mistral":
        return t.MistralConfig(num_key_value_heads=2, sliding_window=None, **common)
    if family == "mixtral":
        return t.MixtralConfig(
            num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, **common
        )
    if family == "starcoder2":
        return t.Starcoder2Config(num_key_value_heads=2, **common)
    if family == "gpt_neox":
        return t.GPTNeoXConfig(**common)
    raise ValueError(family)


FAMILIES = ["llama", "mistral", "mixtral", "starcoder2", "gpt_neox"]


def build_model(out_dir: Path, family: str = "llama", seed: int = 0) -> Path:
    """Write a tiny random model of `family` with tokenizer and chat template to out_dir."""
    import torch
    from transformers import AutoModelForCausalLM

    out_dir.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out_dir)
    config = family_config(family, len(tok), tok.eos_token_id, tok.pad_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Random init gives near-uniform logits; wider weights make greedy choices clear-cut,
    # as in a trained model, so float rounding never decides a token.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out_dir)
    return out_dir
