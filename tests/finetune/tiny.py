"""A tiny, randomly initialised Phi-3 saved as a Hugging Face folder, built offline in about a
second: a byte-level BPE tokenizer trained on the example chat data, Phi-3's chat template
and special tokens, and a `Phi3ForCausalLM` with a 64-wide hidden state and two layers."""

from __future__ import annotations

import json
from pathlib import Path

from lmfoundry.catalog.cards import PHI3_TEMPLATE

EXAMPLE_DATA = Path(__file__).parents[2] / "examples" / "finetune" / "data" / "chat.jsonl"
SPECIAL_TOKENS = [
    "<unk>",
    "<s>",
    "<|endoftext|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
]


def build_tiny_phi3(path: Path, corpus: Path = EXAMPLE_DATA, seed: int = 0) -> Path:
    """Write the model to `path` (a folder `lmfoundry catalog import` accepts) and return it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Phi3Config, Phi3ForCausalLM, PreTrainedTokenizerFast

    texts = [
        message["content"]
        for line in corpus.read_text().splitlines()
        for message in json.loads(line)["messages"]
    ]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=600,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="<|endoftext|>",
        unk_token="<unk>",
        pad_token="<|endoftext|>",
    )
    tokenizer.chat_template = PHI3_TEMPLATE
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
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Phi3ForCausalLM(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
