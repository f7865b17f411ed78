"""Data sets, one module per kind: ``digits``, ``cifar100``, ``text`` (labelled text files, with
``vocabulary``), ``images`` (a folder per class, with ``image_files`` for the layout and
``image_decode`` for the parallel decode), ``arrays`` (NumPy ``.npz``).

Each loader is referenced from ``conf/dataset/*.yaml`` by ``_target_``; a new data set is a new
YAML file plus, when it needs new code, a new module here. What every loader returns lives in
:mod:`runner.data.base`.
"""

from runner.data.base import (
    Dataset,
    Rows,
    Scaling,
    Split,
    batches,
    calibration_sample,
    check_dataset,
    stratified_split,
    subset,
)

__all__ = [
    "Dataset",
    "Rows",
    "Scaling",
    "Split",
    "batches",
    "calibration_sample",
    "check_dataset",
    "stratified_split",
    "subset",
]
