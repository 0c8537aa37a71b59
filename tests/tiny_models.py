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


def family_config(family: str, vocab_size: int, eos: int, pad: int, hidden_size: int = 32) -> Any:
    """A config a few thousand parameters big for one model family."""
    import transformers as t

    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
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
    tok, model = _random_model(out_dir, family, seed)
    return _save(out_dir, tok, model)


def _random_model(out_dir: Path, family: str, seed: int, hidden_size: int = 32) -> Any:
    """(tokenizer, model): the tokenizer written to out_dir, the model random and unsaved."""
    import torch
    from transformers import AutoModelForCausalLM

    out_dir.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out_dir)
    config = family_config(family, len(tok), tok.eos_token_id, tok.pad_token_id, hidden_size)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Random init gives near-uniform logits; wider weights make greedy choices clear-cut,
    # as in a trained model, so float rounding never decides a token.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
    return tok, model


def _save(out_dir: Path, tok: Any, model: Any) -> Path:
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out_dir)
    return out_dir


# ---------------------------------------------------------------- keyed models and adapters
#
# A fix that changes a model's answers to some prompts and leaves every other answer as it
# was, as a good contribution does. With random weights that takes construction: the
# keyed model's token embeddings are orthonormal (hidden size ≥ vocabulary), so a rank-1
# LoRA on the first layer's value projection whose A is one token's embedding direction
# is exactly zero on every other token. Such a *keyed adapter* changes the answer to a
# prompt containing its key token (attention carries the change on) and nothing else;
# key tokens get zero output weights, so no answer ever generates one. Two keyed adapters
# on the same key change the same prompts in different ways: each fixes its own report
# alone, and their sum fixes neither, which is how fixes that pass alone fail together.

KEYED_HIDDEN = 416  # > the 400-token vocabulary, divisible by the 4 heads


def build_keyed_model(out_dir: Path, keys: list[str], seed: int = 0) -> Path:
    """A tiny Llama with orthonormal embeddings whose `keys` (tokens) are never generated."""
    import torch

    tok, model = _random_model(out_dir, "llama", seed, KEYED_HIDDEN)
    vocab = len(tok)
    assert vocab <= KEYED_HIDDEN
    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.randn(KEYED_HIDDEN, vocab))  # (hidden, vocab), orthonormal
        model.model.embed_tokens.weight.copy_(q.T * 0.2 * KEYED_HIDDEN**0.5)  # (vocab, hidden)
        ids = [key_id(tok, k) for k in keys]
        model.lm_head.weight[ids] = 0.0  # a logit of 0 never wins against 399 random ones
    return _save(out_dir, tok, model)


def key_id(tok: Any, key: str) -> int:
    """The id of `key`, a word that must be one token (with its leading space)."""
    pieces = tok.tokenize(key)
    assert len(pieces) == 1, f"{key!r} is {pieces}, not one token"
    return int(tok.convert_tokens_to_ids(pieces[0]))


def keyed_adapter(base_dir: Path, out: Path, key: str, seed: int = 0) -> Path:
    """A rank-1 LoRA that changes only what follows `key` in a prompt (see above)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    token = key_id(AutoTokenizer.from_pretrained(base_dir), key)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    direction = model.model.embed_tokens.weight[token].detach()
    config = LoraConfig(r=1, lora_alpha=1, target_modules=["v_proj"], layers_to_transform=[0])
    peft_model = get_peft_model(model, config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_A" in name:  # (1, hidden): zero on every other token's embedding
                p.copy_((direction / direction.norm())[None, :])
            elif "lora_B" in name:  # (kv hidden, 1)
                torch.nn.init.normal_(p, std=2.0)
    peft_model.save_pretrained(out)
    return out
