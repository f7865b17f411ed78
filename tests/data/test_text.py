"""The fake-news text set: vocabulary, segmentation, the loader, text models under every recipe."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from helpers import compose_config, text_rows, write_text_csv

from runner.data.text import load_text_classification
from runner.data.vocabulary import Vocabulary, looks_segmented, segment
from runner.errors import RunnerError
from runner.evaluation.interpreter import TFLiteModel
from runner.pipeline import run


def test_vocabulary_matches_keras_tokenizer_and_pad_sequences():
    from tf_keras.preprocessing.sequence import pad_sequences
    from tf_keras.preprocessing.text import Tokenizer

    # setup: ties in counts, punctuation, upper case, a long sentence to truncate
    texts = ["b a a, c!", "A d d b", "e f g h i j k l m n o p q r s t u v w x y z a"]
    tok = Tokenizer(num_words=6)
    tok.fit_on_texts(texts)
    # execute
    vocab = Vocabulary.fit(texts, num_words=6)
    # assert
    assert vocab.word_index == tok.word_index
    new = ["a b z unknown", "d d d d d d d d d d d d", ""]
    np.testing.assert_array_equal(
        vocab.encode(new, 10), pad_sequences(tok.texts_to_sequences(new), 10)
    )
    assert vocab.size == 6 and max(vocab.kept().values()) == 5


def test_segmentation_cuts_raw_chinese_and_keeps_segmented_text():
    raw = ["今天北京的天气很好我们去公园散步吧"]
    assert not looks_segmented(raw) and looks_segmented(["今天 北京 的 天气 很 好"])
    cut = segment(raw, "auto")[0]
    assert " " in cut and cut.replace(" ", "") == raw[0]
    assert segment(["今天 北京"], "auto") == ["今天 北京"]
    assert segment(raw, "none") == raw
    with pytest.raises(RunnerError, match="auto"):
        segment(raw, "spacy")


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_loader_reads_each_format_with_its_split_column(tmp_path, suffix):
    df = pd.DataFrame(text_rows(50, 0))
    path = tmp_path / f"d{suffix}"
    {
        ".csv": lambda: df.to_csv(path, index=False),
        ".tsv": lambda: df.to_csv(path, sep="\t", index=False),
        ".jsonl": lambda: df.to_json(path, orient="records", lines=True, force_ascii=False),
    }[suffix]()
    d = load_text_classification(path=str(path), maxlen=20)
    assert (len(d.train), len(d.test)) == (40, 10)
    assert d.train.x.dtype == np.int32 and d.train.x.shape == (40, 20) and d.num_classes == 2
    assert d.model_kwargs["vocab_size"] == len(json.loads(d.files["word_index.json"])) + 1


def test_vocabulary_comes_from_the_training_split_only(tmp_path):
    rows = text_rows(20, 0)
    rows[0] = {"text": "独有词 今天", "label": 0, "split": "test"}
    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    d = load_text_classification(path=str(tmp_path / "d.csv"))
    assert "独有词" not in json.loads(d.files["word_index.json"])


def test_loader_without_split_column_stratifies_and_maps_string_labels(tmp_path):
    df = pd.DataFrame(text_rows(60, 0)).drop(columns="split")
    df["label"] = df["label"].map({0: "real", 1: "rumor"})
    df.to_csv(tmp_path / "d.csv", index=False)
    d = load_text_classification(path=str(tmp_path / "d.csv"), test_fraction=0.25)
    assert d.class_names == ("real", "rumor") and len(d.test) == 15
    assert abs(int(d.test.y.sum()) - 7.5) <= 0.5


def test_a_given_word_index_and_num_words_cap_are_used(tmp_path):
    write_text_csv(tmp_path / "d.csv", 40)
    (tmp_path / "wi.json").write_text(
        json.dumps({"今天": 1, "官方": 2, "震惊": 3}, ensure_ascii=False)
    )
    d = load_text_classification(
        path=str(tmp_path / "d.csv"), word_index=str(tmp_path / "wi.json"), num_words=3
    )
    assert d.model_kwargs["vocab_size"] == 3 and d.train.x.max() <= 2


def test_loader_errors_name_the_problem(tmp_path):
    write_text_csv(tmp_path / "d.csv", 20)
    with pytest.raises(RunnerError, match="dataset.path="):
        load_text_classification(path=None)
    with pytest.raises(RunnerError, match=r"no column\(s\) \['body'\].*dataset.text_column"):
        load_text_classification(path=str(tmp_path / "d.csv"), text_column="body")
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(RunnerError, match="unknown file type"):
        load_text_classification(path=str(tmp_path / "d.xlsx"))


# --------------------------------------------------------------------------- text models end to end
def text_cfg(tmp_path, csv, model, recipe, *extra):
    return compose_config(
        "dataset=fake_news",
        f"dataset.path={csv}",
        f"model={model}",
        f"recipe={recipe}",
        # one cache beside the module's data: tests of the same model share its baseline
        f"cache_dir={csv.parent / 'cache'}",
        "train.epochs=8",
        "train.learning_rate=0.01",
        "train.early_stopping_patience=0",
        "model.embedding_dim=16",
        "evaluation.latency_samples=2",
        "evaluation.progress=false",
        *extra,
    )


@pytest.fixture(scope="module")
def text_csv(tmp_path_factory):
    return write_text_csv(tmp_path_factory.mktemp("text") / "news.csv", n=300)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "recipe"),
    [
        ("text_cnn", "dynamic_range"),
        ("text_cnn", "full_integer"),
        ("text_cnn", "int16x8"),
        ("text_lstm", "float16"),
        ("text_lstm", "full_integer"),
    ],
)
def test_text_models_convert_faithfully_and_keep_token_ids(tmp_path, text_csv, model, recipe):
    result = run(
        text_cfg(
            tmp_path,
            text_csv,
            model,
            recipe,
            # one LSTM baseline for the module (units=8): the int16x8 tests below hit its cache
            "model.units=8" if model == "text_lstm" else "model.filters=32",
        ),
        tmp_path,
    )
    rows = {r["artifact"]: r for r in result.rows}
    assert result.ok, rows
    assert rows["float.h5"]["accuracy"] >= 0.9  # the keyword task is learnt
    assert rows["none.tflite"]["agreement"] >= 0.99
    art = rows[f"{recipe}.tflite"]
    assert art["agreement"] >= 0.95 and abs(art["accuracy_delta"]) <= 0.05
    tfl = TFLiteModel(tmp_path / "models" / f"{recipe}.tflite")
    assert tfl.input_dtype == np.int32  # ids are never rescaled into int8
    assert (tmp_path / "models" / "word_index.json").is_file()
    vocab = json.loads((tmp_path / "models" / "word_index.json").read_text())
    assert "震惊" in vocab and min(vocab.values()) == 1
    if model == "text_lstm" and recipe == "float16":
        # a recurrent model's route is measured and recorded, and scored by output fidelity
        for name in ("none.tflite", "float16.tflite"):
            assert rows[name]["route"] in ("fused", "unrolled")
            assert rows[name]["agreement"] >= 0.995
        assert rows["none.tflite"]["output_sqnr_db"] > art["output_sqnr_db"] > 30
        saved = json.loads((tmp_path / "results.json").read_text())
        route = saved["conversion_routes"]["float16.tflite"]
        assert route["route"] == art["route"] and route["reason"]
        assert all(t["output_sqnr_db"] is not None for t in route["trials"])


@pytest.mark.slow
def test_lstm_int16x8_works_through_the_unrolled_route(tmp_path, text_csv):
    # setup / execute: the fused LSTM kernel has no 16x8 version; auto tries both routes
    result = run(text_cfg(tmp_path, text_csv, "text_lstm", "int16x8", "model.units=8"), tmp_path)
    # assert: the unrolled graph converts and stays faithful; the fused failure is recorded
    row = result.row("int16x8.tflite")
    assert row["status"] == "ok" and row["route"] == "unrolled", row
    assert row["agreement"] >= 0.95
    routes = json.loads((tmp_path / "results.json").read_text())["conversion_routes"]
    fused = next(t for t in routes["int16x8.tflite"]["trials"] if t["route"] == "fused")
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in fused["error"]


@pytest.mark.slow
def test_lstm_int16x8_forced_onto_the_fused_route_is_a_failed_row(tmp_path, text_csv):
    cfg = text_cfg(
        tmp_path, text_csv, "text_lstm", "int16x8", "model.units=8", "model.recurrent=fused"
    )
    result = run(cfg, tmp_path)
    row = result.row("int16x8.tflite")
    assert row["status"] == "failed" and "UNIDIRECTIONAL_SEQUENCE_LSTM" in row["error"]
    assert result.row("none.tflite")["status"] == "ok"


def test_rows_without_a_text_or_a_label_are_counted_not_silently_dropped(tmp_path, caplog):
    df = pd.DataFrame(
        {
            "text": ["好 消息", "", "   ", "坏 消息", None, "真 的"] * 4,
            "label": [0, 1, 0, 1, 0, None] * 4,
        }
    )
    df.to_csv(tmp_path / "t.csv", index=False)
    data = load_text_classification(path=str(tmp_path / "t.csv"))
    assert len(data.train) + len(data.test) == 8  # 2 usable rows of 6, four times
    (said,) = data.warnings
    assert "16 row(s) without a text or a label were skipped (8 used)" in said
    assert any("16 row(s)" in r.getMessage() for r in caplog.records)


def test_a_ragged_first_row_is_named_not_read_as_shifted_columns(tmp_path):
    (tmp_path / "r.csv").write_text("text,label\n好 消息,坏,0\n坏 消息,1\n真 的,0\n")
    with pytest.raises(RunnerError, match=r"first data row has more fields than its header"):
        load_text_classification(path=str(tmp_path / "r.csv"))
