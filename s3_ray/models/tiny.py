"""A tiny randomly initialised chat model for tests and smoke runs (built offline in seconds).

The tokenizer is a byte-level BPE fitted on the protocol's own vocabulary, so any text encodes
(bytes fall back) and the tags of the s3 protocol are short token sequences. The chat template
is ChatML, like Qwen's and SmolLM2's.
"""

from __future__ import annotations

from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_SEED_TEXT = [
    '<query>{"query": "who founded the company"}</query>',
    "<important_info>[1, 2, 3]</important_info>",
    "<search_complete>True</search_complete> <search_complete>False</search_complete>",
    '<information>Doc 1(Title: "Name") text</information>',
    "<question>In which town was the founder born?</question> <think>reasoning</think>",
    "Use the following contexts (some might be irrelevant) on demand: Contexts: Question: Answer:",
    "the a of in and was is to for by with on at as from that which who what where when year",
    "0 1 2 3 4 5 6 7 8 9 10 town river company founder born mayor headquarters product",
]


def build_tiny_model(out: Path, vocab_size: int = 512, hidden: int = 64, layers: int = 2, seed: int = 0) -> None:
    """Write a tiny Llama + tokenizer to `out` (a folder that `from_pretrained` loads)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_SEED_TEXT * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(out)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(out)
