"""The bundle's tokenizer file gives open_clip's token ids (models/tokenizer.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.tokenizer import ClipTokenizer, build_clip_tokenizer, clean_text

pytestmark = pytest.mark.unit

TEXTS = [
    "a photo of a circle.", "X X X X lightning bolt.", "six-pointed star", "Hello, World! it's 2024 42",
    "café crème brûlée", "日本語のテキスト", "emoji 🐶 dog", "don't can't we've", "a<end_of_text>b",
    "  many   spaces\t here ", "naïve façade", "&amp;lt;b&amp;gt; twice-escaped html", "“curly” ﬁ ligature",
    "ＦＵＬＬＷＩＤＴＨ", "", "Rounded_Square", "a " * 40,  # the last one is longer than the context
]


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from open_clip.tokenizer import default_bpe

    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    build_clip_tokenizer(default_bpe()).save(str(path))
    return path


@pytest.mark.parametrize("context_length", [77, 24])
def test_token_ids_equal_open_clips(tokenizer_file: Path, context_length: int) -> None:
    from open_clip.tokenizer import SimpleTokenizer

    want = SimpleTokenizer()(TEXTS, context_length=context_length).numpy()
    got = ClipTokenizer(tokenizer_file, context_length)(TEXTS)
    assert got.dtype == np.int64 and got.shape == (len(TEXTS), context_length)
    for text, w, g in zip(TEXTS, want, got, strict=True):
        assert np.array_equal(w, g), text


def test_truncation_keeps_the_end_token_last(tokenizer_file: Path) -> None:
    tok = ClipTokenizer(tokenizer_file, 8)
    ids = tok(["one two three four five six seven eight nine"])[0]
    assert ids[0] == tok.sot_id and ids[-1] == tok.eot_id and (ids > 0).all()
    assert tok.token_counts(["one two three four five six seven eight nine"]) == [11]


def test_cleaning_is_open_clips() -> None:
    from open_clip.tokenizer import _clean_lower

    for text in TEXTS:
        assert clean_text(text) == _clean_lower(text)
