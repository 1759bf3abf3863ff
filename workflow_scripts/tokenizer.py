"""Train a byte-level BPE tokenizer with a ChatML chat template, saved in HF format.

Used for the project's reference models and for the tiny random-weight test models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
# transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX (single digits, letters with one leading symbol)
QWEN2_PRETOKENIZE_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                           r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8192, model_max_length: int = 131072):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(texts)
    tok = Tokenizer(models.BPE())
    # Exactly the normalizer / pre-tokenizer / decoder that transformers' Qwen2Tokenizer rebuilds around a
    # tokenizer.json: AutoTokenizer loads a model directory whose config says qwen2 as Qwen2Tokenizer and
    # ignores the pre-tokenizer stored in tokenizer.json, so any other choice here would tokenize differently
    # in training (tokenizer folder) and in use (model folder).
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(iter(texts), trainer, length=len(texts))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", bos_token=None, pad_token="<|pad|>",
        unk_token=None, model_max_length=model_max_length,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tokenizer(tokenizer, out_dir: str | Path) -> None:
    tokenizer.save_pretrained(str(out_dir))


def check_model_loading(tokenizer_dir: str | Path, texts: Iterable[str]) -> None:
    """Raise unless ``AutoTokenizer`` on a Qwen2 model folder holding this tokenizer gives the same ids as the
    tokenizer folder itself (what training used) on ``texts``."""
    import tempfile

    from transformers import AutoTokenizer, Qwen2Config

    plain = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    with tempfile.TemporaryDirectory() as tmp:
        plain.save_pretrained(tmp)
        Qwen2Config(vocab_size=len(plain)).save_pretrained(tmp)
        as_model = AutoTokenizer.from_pretrained(tmp)
        for text in texts:
            a = plain(text, add_special_tokens=False)["input_ids"]
            b = as_model(text, add_special_tokens=False)["input_ids"]
            if a != b:
                raise RuntimeError(
                    f"tokenizer {tokenizer_dir}: a model folder loads it as {type(as_model).__name__}, which "
                    f"tokenizes differently ({len(a)} vs {len(b)} ids) from the tokenizer folder "
                    f"({type(plain).__name__}) on {text[:80]!r}")
