"""The tokenizer that goes with an export, in the form each runtime reads.

lmjob's byte tokenizer (one id per UTF-8 byte, ids 0–255) becomes a byte-level BPE with
256 tokens and no merges: GPT-2's byte→character table names the tokens, so
`AutoTokenizer` and llama.cpp's `gpt2` tokenizer both turn text into exactly our ids. The
ids from 256 up to the padded vocabulary are never produced; GGUF lists them as unused
`<pad_N>` tokens because llama.cpp wants one entry per embedding row. A Hugging Face
tokenizer is copied with its own `save_pretrained`.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

BYTE_VOCAB = 256


def byte_token_strings() -> list[str]:
    """Token string of each byte id 0–255: GPT-2's printable stand-in for that byte."""
    # The table GPT-2 (and tokenizers' ByteLevel) uses: printable bytes map to themselves,
    # the rest to code points from 256 up, in byte order.
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    table, extra = {}, 0
    for b in range(BYTE_VOCAB):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(BYTE_VOCAB + extra)
            extra += 1
    return [table[b] for b in range(BYTE_VOCAB)]


def write_hf_tokenizer(tokenizer: str, folder: Path) -> bool:
    """Write tokenizer files into an HF folder; False (logged) when the source is gone."""
    if tokenizer == "bytes":
        _byte_tokenizer().save_pretrained(folder)
        return True
    if not Path(tokenizer).is_dir():
        log.warning("tokenizer %s is not on this machine: the export has no tokenizer", tokenizer)
        return False
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(tokenizer, local_files_only=True).save_pretrained(folder)
    return True


def _byte_tokenizer():  # -> transformers.PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {s: i for i, s in enumerate(byte_token_strings())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False)
