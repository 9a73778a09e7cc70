"""Text → token ids: byte-level by default, or a Hugging Face tokenizer from a local directory.

`transformers` is imported only for the latter, so the byte path needs nothing beyond torch.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol

import torch


class Tokenizer(Protocol):
    """What the data pipeline and sampling need from a tokenizer."""

    name: str
    vocab_size: int
    separator: list[int]
    """Ids placed between concatenated documents."""

    def encode(self, data: bytes) -> torch.Tensor: ...

    def decode(self, ids: list[int]) -> str: ...

    def fingerprint(self) -> str: ...


class ByteTokenizer:
    """One token per UTF-8 byte: 256 ids, no files, lossless on any text."""

    name = "bytes"
    vocab_size = 256
    separator = list(b"\n\n")

    def encode(self, data: bytes) -> torch.Tensor:
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64)

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def fingerprint(self) -> str:
        return "bytes-v1"


class HFTokenizer:
    """A tokenizer saved with `save_pretrained` in a local directory (never downloaded)."""

    def __init__(self, path: str) -> None:
        if not Path(path).is_dir():
            raise ValueError(
                f"training.data.tokenizer: {path} is neither `bytes` nor a local tokenizer directory"
            )
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise ValueError(
                "training.data.tokenizer: a Hugging Face tokenizer needs the `transformers` "
                "package in the trainer image; install it, or use tokenizer: bytes"
            ) from None
        self._tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.path = path
        self.name = Path(path).name
        self.vocab_size = len(self._tok)
        eos = self._tok.eos_token_id
        self.separator = [eos] if eos is not None else self._tok.encode("\n\n")

    def encode(self, data: bytes) -> torch.Tensor:
        ids = self._tok.encode(data.decode("utf-8", errors="replace"), add_special_tokens=False)
        return torch.tensor(ids, dtype=torch.int64)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids)

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for f in sorted(Path(self.path).iterdir()):
            if f.is_file():
                digest.update(f.name.encode())
                digest.update(f.read_bytes())
        return "hf-" + digest.hexdigest()[:16]


def build_tokenizer(tokenizer: str) -> Tokenizer:
    """The tokenizer that `training.data.tokenizer` names."""
    return ByteTokenizer() if tokenizer == "bytes" else HFTokenizer(tokenizer)


def padded_vocab_size(vocab_size: int, multiple: int = 128) -> int:
    """Vocabulary rounded up so embedding rows split evenly over tensor-parallel ranks (and
    matmuls get friendly shapes); the extra ids are never produced by the tokenizer."""
    return -(-vocab_size // multiple) * multiple
