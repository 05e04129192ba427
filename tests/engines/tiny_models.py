"""Tiny, randomly initialised Hugging Face models for engine tests, built offline in about a
second: a byte-level BPE tokenizer trained on generated text, Phi-3's chat template and
special tokens, a `Phi3ForCausalLM` 64 wide and 2 layers deep, and LoRA adapters for it.

Random weights answer gibberish, but deterministically: tests compare token ids against what
transformers and PEFT produce for the same prompt.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from lmfoundry.catalog.cards import PHI3_TEMPLATE

SPECIAL_TOKENS = [
    "<unk>",
    "<s>",
    "<|endoftext|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
]
LORA_TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]  # Phi-3's fused layers

_SUBJECTS = ["The model", "A small cat", "Our team", "The gateway", "Ein Hund", "La señora"]
_VERBS = ["answers", "reads", "writes", "counts", "streams", "trägt", "mange"]
_OBJECTS = ["the tokens", "a long story", "every request", "déjà vu", "ten numbers", "naïve code"]
_ENDINGS = [".", "!", "?", " today.", " again 🙂", " on the CPU."]


def corpus() -> list[str]:
    """A few hundred short lines, some of them outside ASCII (multi-byte UTF-8)."""
    lines = [
        f"{s} {v} {o}{e}" for s, v, o, e in itertools.product(_SUBJECTS, _VERBS, _OBJECTS, _ENDINGS)
    ]
    return lines[::4]


def build_tiny_phi3(path: Path, seed: int = 0) -> Path:
    """Write the model to `path` (a folder `lmfoundry catalog import` accepts) and return it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        corpus(),
        trainers.BpeTrainer(
            vocab_size=512,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    # Like Phi-3's (Llama) tokenizer, it adds a BOS to plain text; chat prompts get none unless
    # the template writes one (`apply_chat_template` tokenizes without special tokens).
    bpe.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bpe.token_to_id("<s>"))]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="<|endoftext|>",
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
    )
    tokenizer.chat_template = PHI3_TEMPLATE
    end_ids = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|end|>")]
    config = Phi3Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        original_max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=end_ids,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Phi3ForCausalLM(config)
    # Random weights of std 0.02 give nearly flat logits; sharper ones make greedy decoding
    # less sensitive to float rounding (batched and single-sequence matmuls round differently).
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=end_ids,
        pad_token_id=tokenizer.pad_token_id,
    )
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_lora(model_path: Path, path: Path, seed: int, rank: int = 8) -> Path:
    """A LoRA adapter for the tiny model with random, non-zero weights (PEFT's default init
    would make it a no-op), saved as adapter_config.json + adapter_model.safetensors."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_path)
    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=LORA_TARGETS, init_lora_weights=False
    )
    model = get_peft_model(base, config)
    model.save_pretrained(path)
    return path
