"""A folder of images per class (the layout ``keras.utils.image_dataset_from_directory`` reads),
decoded once into a uint8 array file that later runs memory-map.

Layouts: ``DIR/train/<class>/…`` beside ``DIR/test/<class>/…``, or one tree ``DIR/<class>/…``
split by a seeded stratified ``test_fraction``. Class ids are the sorted class names.

The decoded array is cached under ``cache_dir/<key>/`` where the key names every file (path, size,
mtime), the image size, the colour mode and (one tree) the split. Images are stored train first,
then test, so both splits are views of the mapped file: training and evaluation read it one batch
at a time and memory does not grow with the data set. The entry is written in a temp folder and
renamed into place, checked by SHA-256 when read, and rebuilt when it does not match.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import Field

from runner.data.base import Dataset, Split, SplitOptions, subset
from runner.data.image_cache import writable_root
from runner.data.image_decode import COLOR_MODES
from runner.data.image_entry import SHOW_BAD, DecodeJob, decoded, examples
from runner.data.image_files import Listing, decode_key, list_images
from runner.describe import Described
from runner.errors import RunnerError
from runner.schema import options, tags

log = logging.getLogger(__name__)


ColorMode = Literal[tuple(COLOR_MODES)]  # type: ignore[valid-type]
OnBadFile = Literal["skip", "error"]
Size = Annotated[int, Field(ge=1)]


class ImageFolderOptions(SplitOptions):
    """``dataset=image_folder``: one folder per class (or train/ and test/ trees of them)."""

    path: str | None = Field(None, min_length=1, description="the folder (required)")
    image_size: Annotated[
        Size | Annotated[list[Size], Field(min_length=2, max_length=2)] | None,
        Described("an integer >= 1, or [height, width], or null"),
    ] = Field(None, description="the size images are resized to (null: a pretrained model's)")
    color_mode: ColorMode | None = Field(
        None, description="null: a pretrained model's channels, else rgb"
    )
    on_bad_file: OnBadFile = Field(
        "skip", description="an unreadable image: skip (counted and named) or error"
    )
    workers: int | None = Field(
        None, ge=1, description="decode processes (null: every core)", **tags(trains=False)
    )
    cache_dir: str | None = Field(
        None,
        min_length=1,
        description="where the decoded arrays are kept (null: no cache)",
        **tags(trains=False),
    )


@options(ImageFolderOptions)
def load_image_folder(
    name: str = "image_folder",
    model_input_shape: Sequence[int | None] | None = None,
    *,
    path: str | None,
    image_size: int | Sequence[int] | None,
    color_mode: str | None,
    test_fraction: float,
    split_seed: int,
    train_size: int | None,
    test_size: int | None,
    on_bad_file: str,
    workers: int | None,
    cache_dir: str | None,
) -> Dataset:
    """Images in one folder per class, decoded once to a cached uint8 array (see the module).

    Raises:
        RunnerError: no such folder, an empty folder or class folder, train and test with other
            classes, no ``image_size``, or an unreadable image with ``on_bad_file=error``.

    ``model_input_shape``: a pretrained model's (height, width, channels), given by the
    runner: an unset ``image_size`` / ``color_mode`` is taken from it.
    """
    if model_input_shape is not None and len(model_input_shape) == 3:
        h, w, channels = model_input_shape
        if image_size is None and h is not None and w is not None:
            image_size = [int(h), int(w)]
        if color_mode is None and channels is not None:
            color_mode = "grayscale" if channels == 1 else "rgb"
    size, mode = _checked(path, image_size, color_mode, on_bad_file)
    listing = list_images(Path(path).expanduser(), test_fraction, split_seed)
    key = decode_key(listing, size, mode, test_fraction, split_seed)
    root = Path(cache_dir or Path(path).expanduser() / ".runner-cache")
    root, read_only, moved = writable_root(root, "dataset.cache_dir" if cache_dir else None, key)
    job = DecodeJob(listing, key, root / key, size, mode, workers, on_bad_file, read_only)
    x, y, n_train, bad = decoded(job)
    info, warnings = _summary(listing, size, mode, root / key, bad)
    warnings = (*warnings, *moved)
    train, test = Split(x[:n_train], y[:n_train]), Split(x[n_train:], y[n_train:])
    if not len(train) or not len(test):
        raise RunnerError(
            f"{listing.root}: no readable images left in the "
            f"{'train' if not len(train) else 'test'} split"
        )
    return Dataset(
        name=name,
        train=subset(train, train_size, split_seed),
        test=subset(test, test_size, split_seed),
        num_classes=len(listing.class_names),
        class_names=listing.class_names,
        source_key=key,
        info=info,
        warnings=warnings,
    )


def _checked(path, image_size, color_mode, on_bad_file) -> tuple[tuple[int, int], str]:
    """(height, width) and the color mode, or the one line that says what is missing."""
    if not path:
        raise RunnerError(
            "dataset=image_folder needs dataset.path=/path/to/images (one folder per class)"
        )
    if image_size is None:
        raise RunnerError(
            "dataset.image_size is not set: give the size images are resized to, e.g. "
            "dataset.image_size=[32,32] (with model=pretrained it defaults to the model's input)"
        )
    size = _hw(image_size)
    mode = color_mode or "rgb"
    if mode not in COLOR_MODES:
        raise RunnerError(f"dataset.color_mode must be rgb or grayscale, got {color_mode!r}")
    if on_bad_file not in get_args(OnBadFile):
        raise RunnerError(f"dataset.on_bad_file must be skip or error, got {on_bad_file!r}")
    return size, mode


def _summary(listing: Listing, size, mode: str, cache: Path, bad: list[tuple[str, str]]):
    """The data set's ``info`` and its warnings (the unreadable files skipped)."""
    info: dict[str, Any] = {
        "path": str(listing.root),
        "layout": listing.layout,
        "image_size": list(size),
        "color_mode": mode,
        "decode_cache": str(cache),
        "skipped_files": len(bad),
        "skipped_examples": [f"{p}: {why}" for p, why in bad[:SHOW_BAD]],
    }
    warnings = ()
    if bad:
        warnings = (
            f"skipped {len(bad)} unreadable image(s) under {listing.root}: {examples(bad)} "
            "(dataset.on_bad_file=error makes this fatal)",
        )
        log.warning("%s", warnings[0])
    return info, warnings


def _hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return (image_size, image_size)
    hw = tuple(int(v) for v in image_size)
    if len(hw) != 2 or min(hw) < 1:
        raise RunnerError(
            f"dataset.image_size must be one size or [height, width], got {list(image_size)}"
        )
    return hw  # type: ignore[return-value]
