"""Text to token ids, the way Keras's ``Tokenizer`` + ``pad_sequences`` do it.

Reimplemented in plain Python (no TensorFlow import) and tested against tf-keras's own
``Tokenizer``, so a ``word_index.json`` made by either works with the other.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from runner.errors import RunnerError
from runner.files import atomic_write_json

log = logging.getLogger(__name__)

# Keras Tokenizer defaults: these characters become separators; text is lower-cased.
KERAS_FILTERS = '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n'
_TRANSLATE = str.maketrans(dict.fromkeys(KERAS_FILTERS, " "))
_CJK = re.compile(r"[\u3400-\u9fff]")
Segment = Literal["auto", "jieba", "none"]
SEGMENT_MODES = get_args(Segment)


def words(text: str) -> list[str]:
    """Keras's ``text_to_word_sequence`` with the default filters."""
    return [w for w in text.lower().translate(_TRANSLATE).split(" ") if w]


def looks_segmented(texts: Sequence[str]) -> bool:
    """Already cut into words? Segmented Chinese has short space-separated tokens (~2 chars);
    raw Chinese has long runs (a whole clause or sentence)."""
    lengths = [len(w) for t in texts[:500] for w in t.split() if _CJK.search(w)]
    return not lengths or float(np.mean(lengths)) <= 4.0


def segment(texts: Sequence[str], mode: str = "auto") -> list[str]:
    """Space-separated words: jieba for raw Chinese, unchanged for text already segmented."""
    if mode not in SEGMENT_MODES:
        raise RunnerError(f"dataset.segment must be one of {SEGMENT_MODES}, got {mode!r}")
    if mode == "none" or (mode == "auto" and looks_segmented(texts)):
        return list(texts)
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return [" ".join(w for w in jieba.lcut(t) if w.strip()) for t in texts]


@dataclass(frozen=True)
class Vocabulary:
    """A Keras ``Tokenizer.word_index`` (1-based, most frequent first) with an optional cap."""

    word_index: dict[str, int]
    num_words: int | None = None

    @classmethod
    def fit(cls, texts: Iterable[str], num_words: int | None = None) -> Vocabulary:
        counts: Counter[str] = Counter()
        for t in texts:
            counts.update(words(t))
        # Counter keeps first-seen order; a stable sort by count gives Keras's order.
        ordered = sorted(counts, key=lambda w: -counts[w])
        return cls({w: i + 1 for i, w in enumerate(ordered)}, num_words)

    @classmethod
    def load(cls, path: str | os.PathLike, num_words: int | None = None) -> Vocabulary:
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunnerError(
                f"vocabulary file {p} does not exist (expected a Keras Tokenizer word_index.json)"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunnerError(f"{p} is not a word_index.json ({e})") from None
        if not isinstance(data, dict) or not all(isinstance(v, int) for v in data.values()):
            raise RunnerError(
                f"{p} is not a word_index.json: expected a JSON object of word -> integer id"
            )
        return cls(data, num_words)

    @cached_property
    def size(self) -> int:
        """Rows an Embedding needs: ids run from 0 (padding) to the largest id kept."""
        top = max(self.word_index.values(), default=0) + 1
        return min(top, self.num_words) if self.num_words else top

    def kept(self) -> dict[str, int]:
        limit = self.size
        return {w: i for w, i in self.word_index.items() if i < limit}

    def save(self, path: str | os.PathLike) -> Path:
        """Save the words the model can see (ids below the cap), as a Keras ``word_index``."""
        return atomic_write_json(path, self.kept())

    def to_json(self) -> str:
        return json.dumps(self.kept(), ensure_ascii=False)

    def encode(self, texts: Sequence[str], maxlen: int) -> np.ndarray:
        """``texts_to_sequences`` then ``pad_sequences(maxlen)``: unknown and capped words are
        dropped; sequences are padded and truncated at the front (Keras's 'pre')."""
        limit = self.size
        out = np.zeros((len(texts), maxlen), np.int32)
        for row, t in enumerate(texts):
            ids = [i for w in words(t) if (i := self.word_index.get(w)) is not None and i < limit][
                -maxlen:
            ]
            if ids:
                out[row, maxlen - len(ids) :] = ids
        return out
