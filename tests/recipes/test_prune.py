"""Pruning, clustering and the collaborative recipes on the default digits run (issue #34)."""

from __future__ import annotations

import pytest
from helpers import TINY_MOBILENET, compose_config

from runner.pipeline import run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    """The default run's full_integer, prune, cluster and prune_cluster_qat rows (one baseline)."""
    tmp = tmp_path_factory.mktemp("prune")
    common = [f"cache_dir={tmp / 'cache'}", "evaluation.latency_samples=3"]
    out = {}
    for recipe in ("full_integer", "prune", "cluster", "prune_cluster_qat"):
        result = run(compose_config(f"recipe={recipe}", *common), tmp / recipe)
        out[recipe] = result.row(f"{recipe}.tflite")
        out.setdefault("float", result.row("float.h5"))
    collapse = run(compose_config("recipe=prune", "recipe.sparsity=0.995", *common), tmp / "c")
    out["collapse"] = collapse.row("prune.tflite")
    for export in ("none", "full_integer"):
        result = run(compose_config(*sparse_overrides(export), *common), tmp / f"s-{export}")
        out[f"sparse-{export}"] = result.row("prune.tflite")
        out[f"dense-{export}"] = result.row("none.tflite")  # the float32 reference beside it
        out[f"path-{export}"] = tmp / f"s-{export}" / "models" / "prune.tflite"
    return out


def sparse_overrides(export: str) -> list[str]:
    return ["recipe=prune", "recipe.storage=sparse", f"recipe.export={export}"]


def test_pruning_halves_the_weights_and_shrinks_the_download_not_the_accuracy(rows):
    full, pruned = rows["full_integer"], rows["prune"]
    assert pruned["status"] == "ok" and full["status"] == "ok"
    assert pruned["sparsity"] >= 0.49  # read back from the written file
    assert full["sparsity"] < 0.05
    assert pruned["compression_gzip"] >= 1.4 * full["compression_gzip"]
    assert pruned["accuracy_delta"] >= -0.005  # at most half a point
    assert pruned["size_bytes"] == pytest.approx(full["size_bytes"], rel=0.02)  # raw: the same


def test_clustering_leaves_at_most_16_values_per_output_channel(rows):
    assert rows["cluster"]["max_unique_per_channel"] <= 16
    assert rows["full_integer"]["max_unique_per_channel"] > 16


def test_pcqat_keeps_zeros_and_clusters_through_qat_at_twice_int8s_gzip_compression(rows):
    pcqat, full = rows["prune_cluster_qat"], rows["full_integer"]
    assert pcqat["status"] == "ok", pcqat["error"]
    assert pcqat["sparsity"] >= 0.49 and pcqat["max_unique_per_channel"] <= 16
    assert pcqat["compression_gzip"] >= 2 * full["compression_gzip"]
    assert pcqat["accuracy_delta"] >= -0.01
    assert "then QAT preserving it" in pcqat["note"] and "kept epoch" in pcqat["note"]


def test_a_fine_tuning_that_collapses_fails_its_row_naming_the_cause(rows):
    row = rows["collapse"]
    assert row["status"] == "failed"
    assert "pruning to 0.995 sparsity collapsed the model" in row["error"]
    assert "lower the compression" in row["error"]


def test_sparse_storage_shrinks_a_float_file_and_never_ships_one_litert_refuses(rows):
    from ai_edge_litert.interpreter import Interpreter

    sparse, dense = rows["sparse-none"], rows["dense-none"]
    assert sparse["status"] == "ok" and "stored sparse" in sparse["note"]
    assert sparse["size_bytes"] < 0.75 * dense["size_bytes"]  # half the weights are not stored
    assert sparse["sparsity"] >= 0.45  # counted from what the sparse tensors keep
    assert sparse["accuracy_delta"] >= -0.01
    # int8 with sparse storage is refused by LiteRT's default XNNPACK delegate today: the row
    # says so and the dense int8 file is shipped
    int8 = rows["sparse-full_integer"]
    assert int8["status"] == "ok" and int8["sparsity"] >= 0.49
    if "stored sparse" not in int8["note"]:
        assert "sparse storage refused by LiteRT's default interpreter" in int8["note"]
    for export in ("none", "full_integer"):  # both written files load and run
        interp = Interpreter(model_path=str(rows[f"path-{export}"]))
        interp.allocate_tensors()
        interp.invoke()


def _report(folder) -> list[dict[str, str]]:
    import csv

    return list(csv.DictReader((folder / "layer_report.csv").read_text().splitlines()))


@pytest.fixture(scope="module")
def mobilenet_runs(tmp_path_factory):
    """prune and cluster on a small MobileNet (depthwise kernels), with the layer report."""
    tmp = tmp_path_factory.mktemp("dw")
    common = [
        f"cache_dir={tmp / 'cache'}",
        *TINY_MOBILENET,
        "evaluation.layer_report=true",
    ]
    out = {}
    for recipe, *more in (("prune", "recipe.epochs=3"), ("cluster",), ("full_integer",)):
        run(compose_config(f"recipe={recipe}", *more, *common), tmp / recipe)
        out[recipe] = {r["layer"]: r for r in _report(tmp / recipe)}
    return out


def test_depthwise_kernels_are_pruned_and_clustered_and_the_report_shows_it(mobilenet_runs):
    pruned, clustered = mobilenet_runs["prune"], mobilenet_runs["cluster"]
    depthwise = [k for k in pruned if k.endswith("_dw")]
    assert len(depthwise) == 2  # tfmot alone leaves these dense
    for layer in depthwise:
        assert pruned[layer]["op"] == "DEPTHWISE_CONV_2D"
        assert float(pruned[layer]["weight_sparsity"]) >= 0.45
        assert int(clustered[layer]["unique_per_channel"]) <= 16
    assert float(pruned["block1_pw"]["weight_sparsity"]) >= 0.45
    # a compression recipe has no int8 error per layer: its report is the weight columns alone
    assert all(r["relative_rmse"] == "" for r in pruned.values())


def test_an_int8_layer_report_carries_each_layers_weight_columns(mobilenet_runs):
    full = mobilenet_runs["full_integer"]
    dw, head = full["block1_dw"], full["head"]
    assert float(dw["relative_rmse"]) >= 0 and float(dw["weight_sparsity"]) < 0.1
    assert int(dw["unique_per_channel"]) == 9  # a 3x3 kernel per channel, all distinct
    assert int(head["unique_per_channel"]) > 16  # 32 inputs per class


def test_clustering_with_folded_batch_norm_is_refused_pruning_is_not():
    from helpers import compose_config

    from runner.errors import RunnerError
    from runner.pipeline import build_recipe

    for recipe in ("cluster_qat", "prune_cluster_qat"):
        with pytest.raises(RunnerError, match="clusters would no longer share values"):
            build_recipe(compose_config(f"recipe={recipe}", "recipe.fold_batch_norm=true").recipe)
    pruned = build_recipe(compose_config("recipe=prune_qat", "recipe.fold_batch_norm=true").recipe)
    assert pruned.opts.fold_batch_norm  # zeros stay zeros when a channel is scaled
