"""A labelled text file (CSV, TSV or JSON Lines) as padded token-id sequences."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from pydantic import Field

from runner.data.base import Dataset, Split, SplitOptions, stratified_split, subset
from runner.data.vocabulary import Segment
from runner.errors import RunnerError
from runner.schema import options

log = logging.getLogger(__name__)


_READERS = {
    ".csv": lambda p: _pd().read_csv(p),
    ".tsv": lambda p: _pd().read_csv(p, sep="\t"),
    ".tab": lambda p: _pd().read_csv(p, sep="\t"),
    ".jsonl": lambda p: _pd().read_json(p, lines=True),
    ".json": lambda p: _pd().read_json(p, lines=True),
}


def _pd():
    import pandas

    return pandas


class TextOptions(SplitOptions):
    """``dataset=fake_news``: a labelled CSV/TSV/JSON Lines file as padded token ids."""

    path: str | None = Field(None, min_length=1, description="the labelled file (required)")
    text_column: str = Field("text", min_length=1, description="the column of the text")
    label_column: str = Field("label", min_length=1, description="the column of the label")
    split_column: str | None = Field(
        "split", min_length=1, description="train/test per row (null or absent: a seeded split)"
    )
    segment: Segment = Field("auto", description="word segmentation: jieba for raw Chinese")
    word_index: str | None = Field(
        None, min_length=1, description="a Keras Tokenizer word_index.json to use"
    )
    num_words: int | None = Field(20000, ge=2, description="vocabulary cap (null: every word)")
    maxlen: int = Field(100, ge=1, description="pad/truncate at the front to this length")


@options(TextOptions)
def load_text_classification(
    name: str = "fake_news",
    *,
    path: str | None,
    text_column: str,
    label_column: str,
    split_column: str | None,
    segment: str,
    word_index: str | None,
    num_words: int | None,
    maxlen: int,
    test_fraction: float,
    split_seed: int,
    train_size: int | None,
    test_size: int | None,
) -> Dataset:
    """A labelled text file (CSV, TSV or JSON Lines) as padded token-id sequences.

    Text is segmented into words (jieba for raw Chinese), the vocabulary is built from the
    training split only (or loaded from ``word_index``), and sequences are padded/truncated to
    ``maxlen`` the way Keras's ``pad_sequences`` does. The split comes from ``split_column``
    (``train``/``test``) when the file has it, else from a seeded stratified split.
    """
    from runner.data.vocabulary import Vocabulary
    from runner.data.vocabulary import segment as cut

    df, dropped = _read_table(name, path, text_column, label_column)
    skipped = ()
    if dropped:
        skipped = (
            f"{path}: {dropped} row(s) without a text or a label were skipped ({len(df)} used)",
        )
        log.warning(skipped[0])
    texts = cut(df[text_column].astype(str).tolist(), segment)
    classes = sorted(df[label_column].unique().tolist())
    y = np.searchsorted(np.asarray(classes), df[label_column].to_numpy()).astype(np.int64)
    tr_idx, te_idx = _split(df, y, split_column, test_fraction, split_seed, path)
    vocab = (
        Vocabulary.load(word_index, num_words)
        if word_index
        else Vocabulary.fit((texts[i] for i in tr_idx), num_words)
    )
    x = vocab.encode(texts, maxlen)
    log.info(
        "%s: %d words in the vocabulary (capped at %s), sequences of %d",
        name,
        vocab.size - 1,
        num_words,
        maxlen,
    )
    return Dataset(
        name=name,
        train=subset(Split(x[tr_idx], y[tr_idx]), train_size, split_seed),
        test=subset(Split(x[te_idx], y[te_idx]), test_size, split_seed),
        num_classes=len(classes),
        class_names=tuple(str(c) for c in classes),
        model_kwargs={"vocab_size": vocab.size},
        files={"word_index.json": vocab.to_json()},
        warnings=skipped,
    )


def _read_table(name: str, path: str | None, text_column: str, label_column: str):
    """(the file as a data frame with both columns, how many rows were dropped: an empty text
    or a missing label)."""
    if not path:
        raise RunnerError(
            f"dataset={name} needs dataset.path=/path/to/file.csv (or .tsv/.jsonl) with '{text_column}' and '{label_column}' columns"
        )
    p = Path(path).expanduser()
    if not p.is_file():
        raise RunnerError(f"dataset.path={p} does not exist")
    reader = _READERS.get(p.suffix.lower())
    if reader is None:
        raise RunnerError(
            f"dataset.path={p}: unknown file type {p.suffix!r}; use one of {sorted(_READERS)}"
        )
    try:
        df = reader(p)
    except Exception as e:  # noqa: BLE001
        raise RunnerError(f"could not read {p}: {e}") from None
    if not isinstance(df.index, _pd().RangeIndex):
        # pandas makes the extra leading fields of a ragged first row the index: every column
        # after them shifts (the labels become texts)
        raise RunnerError(
            f"{p}: its first data row has more fields than its header {list(df.columns)}; "
            'a text holding the separator must be quoted ("like, this")'
        )
    missing = [c for c in (text_column, label_column) if c not in df.columns]
    if missing:
        raise RunnerError(
            f"{p} has no column(s) {missing}; its columns are {list(df.columns)} (set dataset.text_column / dataset.label_column)"
        )
    kept = df.dropna(subset=[text_column, label_column])
    kept = kept[kept[text_column].astype(str).str.strip() != ""]
    return kept, len(df) - len(kept)


def _split(df, y, split_column: str | None, test_fraction: float, seed: int, path):
    """Train and test row indices: the file's own split column, else a seeded stratified one."""
    if split_column and split_column in df.columns:
        kind = df[split_column].astype(str).str.lower().to_numpy()
        tr_idx, te_idx = np.flatnonzero(kind == "train"), np.flatnonzero(kind == "test")
        if not len(tr_idx) or not len(te_idx):
            raise RunnerError(f"{path}: column '{split_column}' must mark rows 'train' and 'test'")
        return tr_idx, te_idx
    return stratified_split(y, test_fraction, seed)
