"""Parts of the tiny presets that every family shares: fixed seeds, the tokenizer, the T5 encoders.

Every component is built from a config in code, each under its own fixed seed, so that a
component's weights do not depend on what else was built before it (the trainer builds only the
transformer and must get exactly the weights the generator's pipeline has).
"""

from __future__ import annotations

import contextlib
import string
import zlib
from collections.abc import Iterator

import torch

TINY_SEED = 1234
TINY_TEXT_DIM = 32
TINY_MAX_SEQUENCE_LENGTH = 16


@contextlib.contextmanager
def seeded(component: str) -> Iterator[None]:
    """Build ``component`` under its own seed, leaving the global RNG as it was."""
    # crc32, not hash(): Python's str hash is salted per process.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED + zlib.crc32(component.encode()))
        yield


def tiny_tokenizer():
    """A T5-style Unigram (SentencePiece-like) tokenizer built in memory: a few whole words plus
    single characters, so any prompt tokenizes and different prompts give different ids."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]  # T5 order: pad=0, eos=1, unk=2
    words = (
        "a an the of in on at to and with is are moving camera orbit around scene room street city car "
        "house tree dog cat person walking red blue green white black cube sphere table chair view slowly"
    ).split()
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = (
        [(s, 0.0) for s in specials]
        + [("\u2581" + w, -2.0) for w in words]
        + [("\u2581", -3.0)]
        + [(c, -5.0) for c in chars]
        + [("\u2581" + c, -5.5) for c in chars]
    )
    tok = Tokenizer(models.Unigram(vocab, unk_id=2))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=TINY_MAX_SEQUENCE_LENGTH,
    )


def tiny_text_encoder(seed_name: str, vocab_size: int, umt5: bool):
    """A 2-layer T5 (CogVideoX) or UMT5 (Wan) encoder of width ``TINY_TEXT_DIM``, seeded by ``seed_name``."""
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    kwargs = dict(
        vocab_size=vocab_size,
        d_model=TINY_TEXT_DIM,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    )
    with seeded(f"{seed_name}/text_encoder"):
        if umt5:
            return UMT5EncoderModel(UMT5Config(**kwargs)).eval()
        return T5EncoderModel(T5Config(**kwargs)).eval()
