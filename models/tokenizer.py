"""CLIP's BPE tokenizer as a file in the bundle, run by Hugging Face ``tokenizers`` (no torch, no open_clip).

open_clip's ``SimpleTokenizer`` is pure Python and lives in a package that imports torch, so a slim
install cannot use it. The bundle carries the same vocabulary and merges as ``tokenizer.json``
(Hugging Face ``tokenizers``' format, written once at export by :func:`build_clip_tokenizer` from
open_clip's own ``bpe_simple_vocab_16e6.txt.gz``), and :class:`ClipTokenizer` reproduces open_clip's
``tokenizer(texts)``: the same text cleaning (:func:`clean_text`), pre-tokenizing pattern, byte-level
BPE with ``</w>`` word ends, ``<start_of_text> ... <end_of_text>`` framing, zero padding and
truncation (the last kept token becomes ``<end_of_text>``). ``tests/unit/models/test_tokenizer.py``
checks it against open_clip token for token.
"""

from __future__ import annotations

import gzip
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["TOKENIZER_FILE", "SOT", "EOT", "clean_text", "ClipTokenizer", "build_clip_tokenizer"]

TOKENIZER_FILE = "tokenizer.json"
SOT, EOT = "<start_of_text>", "<end_of_text>"
# open_clip's pre-tokenizing pattern (tokenizer.SimpleTokenizer.pat), its special tokens first.
_PATTERN = SOT + "|" + EOT + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_MERGES = 49152 - 256 - 2  # merges open_clip reads from its vocabulary file (lines 1..48894)


def clean_text(text: str) -> str:
    """open_clip's default cleaning (``tokenizer._clean_lower``): ftfy, HTML unescaped twice, whitespace
    collapsed, lower case. Two labels with the same cleaned text get the same tokens."""
    import ftfy  # core dependency; imported here so that importing this module stays light

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split()).lower()


class ClipTokenizer:
    """``tokenizer.json`` -> open_clip-compatible token ids.

    Args:
        path: the bundle's ``tokenizer.json``.
        context_length: the text tower's context length (the model's ``text_cfg.context_length``).
    """

    def __init__(self, path: str | Path, context_length: int) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(path))
        self.context_length = int(context_length)
        self.sot_id = self._id(SOT)
        self.eot_id = self._id(EOT)

    def _id(self, token: str) -> int:
        tid = self._tok.token_to_id(token)
        if tid is None:
            raise ValueError(f"tokenizer has no {token!r} token: not a CLIP tokenizer")
        return int(tid)

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text with its start and end tokens, before truncation."""
        return [len(e.ids) + 2 for e in self._tok.encode_batch([clean_text(t) for t in texts],
                                                                 add_special_tokens=False)]

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Token ids as open_clip's tokenizer gives them.

        Args:
            texts: N strings.

        Returns:
            (N, context_length) int64 ids, zero-padded; a text longer than the context is truncated
            and its last kept token set to ``<end_of_text>`` (open_clip's rule).
        """
        encoded = self._tok.encode_batch([clean_text(t) for t in texts], add_special_tokens=False)
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)  # (N, L)
        for i, enc in enumerate(encoded):
            ids = [self.sot_id, *enc.ids, self.eot_id][: self.context_length]
            ids[-1] = self.eot_id
            out[i, : len(ids)] = ids
        return out


def build_clip_tokenizer(bpe_path: str | Path) -> Any:
    """A ``tokenizers.Tokenizer`` equal to open_clip's ``SimpleTokenizer`` on cleaned text.

    Args:
        bpe_path: open_clip's merges file (``open_clip.tokenizer.default_bpe()``); read as open_clip reads it.

    Returns:
        The tokenizer (``.save(path)`` writes ``tokenizer.json``).
    """
    from open_clip.tokenizer import bytes_to_unicode  # offline only: the export has open_clip
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")[1 : _MERGES + 1]
    merges = [(a, b) for a, b in (line.split() for line in lines)]
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges] + [SOT, EOT]
    bpe = models.BPE(vocab={v: i for i, v in enumerate(vocab)}, merges=merges, end_of_word_suffix="</w>",
                     continuing_subword_prefix="", fuse_unk=False)
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.add_special_tokens([SOT, EOT])
    return tok

