"""The reference tokenizer must tokenize identically however it is loaded.

Training tokenizes with the tokenizer folder; users (and the workflow) load a model folder, where transformers
picks Qwen2Tokenizer for ``model_type: qwen2`` and rebuilds the pre-tokenizer. A tokenizer trained with
another pre-tokenizer (the GPT-2 byte-level regex, as attempts 1-6 did) gives other ids there.
"""

import pytest

from workflow_scripts.tasks import load_task_class
from workflow_scripts.tasks.base import Renderer
from workflow_scripts.tasks.corpus import tokenizer_corpus
from workflow_scripts.tokenizer import check_model_loading, train_tokenizer


@pytest.fixture(scope="module")
def corpus():
    return tokenizer_corpus(1500, seed=3)


def _prompts(tok):
    out = []
    for task in ["ruler_niah", "story_retrieval", "ruler_vt"]:
        t = load_task_class(task)(Renderer(tok), 1024, "direct", seed=43)
        s = t.build(0)
        out += [s.prompt, s.answer]
    return out


def test_trained_tokenizer_loads_identically_as_model_folder(tmp_path, corpus):
    tok = train_tokenizer(corpus, vocab_size=600)
    tok.save_pretrained(str(tmp_path))
    check_model_loading(tmp_path, _prompts(tok) + corpus[:200])   # raises on the first difference


def test_check_catches_a_byte_level_regex_tokenizer(tmp_path, corpus):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=600, special_tokens=["<|im_end|>", "<|pad|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|pad|>")
    tok.save_pretrained(str(tmp_path))
    # digits are split one by one by Qwen2's pre-tokenizer, grouped by the byte-level regex
    with pytest.raises(RuntimeError, match="tokenizes differently"):
        check_model_loading(tmp_path, ["The value for key 12345 is: 67890.", *corpus[:50]])
