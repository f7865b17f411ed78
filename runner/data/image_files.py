"""The files of an image folder: its layout, classes, labels and the key its decoded array is
cached under (see :mod:`runner.data.images`)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runner.data.base import stratified_split
from runner.errors import RunnerError

log = logging.getLogger(__name__)

# What Pillow decodes for us (GIF: its first frame).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# Bumped when the same files would decode to other arrays, so stale entries are not reused.
DECODE_VERSION = 1


@dataclass(frozen=True)
class Listing:
    """The files of an image folder, in stored order (train first), with their labels."""

    root: Path
    files: list[str]  # relative to root
    labels: np.ndarray
    n_train: int
    class_names: tuple[str, ...]
    layout: str  # "train/test" or "one tree"
    stats: list[tuple[int, int]]  # (size, mtime_ns) of each file


def list_images(root: Path, test_fraction: float, split_seed: int) -> Listing:
    """The class folders and image files under ``root`` (see the module for the layouts)."""
    if not root.is_dir():
        raise RunnerError(
            f"dataset.path={root} is not a folder; expected one subfolder of images per class"
        )
    train_dir, test_dir = root / "train", root / "test"
    if train_dir.is_dir() and test_dir.is_dir():
        tr_names, tr_files, tr_labels = _class_files(train_dir)
        te_names, te_files, te_labels = _class_files(test_dir)
        if tr_names != te_names:
            only_tr = sorted(set(tr_names) - set(te_names))
            only_te = sorted(set(te_names) - set(tr_names))
            raise RunnerError(
                f"{root}: train and test have different classes (only in train: "
                f"{only_tr or 'none'}; only in test: {only_te or 'none'}); give both splits the "
                "same class folders"
            )
        files = [f"train/{f}" for f in tr_files] + [f"test/{f}" for f in te_files]
        labels = np.concatenate([tr_labels, te_labels])
        names, n_train, layout = tr_names, len(tr_files), "train/test"
    else:
        if train_dir.is_dir() != test_dir.is_dir():
            have, lack = ("train", "test") if train_dir.is_dir() else ("test", "train")
            log.warning(
                "%s has a %s/ folder but no %s/: reading it as one tree whose classes include %r",
                root,
                have,
                lack,
                have,
            )
        names, all_files, all_labels = _class_files(root)
        tr, te = stratified_split(all_labels, test_fraction, split_seed)
        order = np.concatenate([tr, te])
        files = [all_files[i] for i in order]
        labels, n_train, layout = all_labels[order], len(tr), "one tree"
    file_stats = [os.stat(root / f) for f in files]
    dup = _first_repeat(files, file_stats)
    if dup:
        raise RunnerError(
            f"{root}: {dup[0]} and {dup[1]} are the same file (a symlink or hard link); an image "
            "may be in one class and one split only, or the test score counts images the model "
            "trained on"
        )
    stats = [(st.st_size, st.st_mtime_ns) for st in file_stats]
    return Listing(root.resolve(), files, labels, n_train, tuple(names), layout, stats)


def _class_files(folder: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(sorted class names, files relative to ``folder``, labels) of one class-per-folder tree."""
    classes = sorted(
        e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")
    )
    if not classes:
        loose = any(_is_image(e.name) for e in os.scandir(folder) if e.is_file())
        raise RunnerError(
            f"{folder} has no class folders"
            + (" (its images lie loose in it)" if loose else " (it is empty)")
            + ": put each class's images in a subfolder named after the class, "
            "e.g. DIR/cat/1.jpg, DIR/dog/2.jpg"
        )
    same = _first_repeat(classes, [os.stat(folder / c) for c in classes])
    if same:
        raise RunnerError(
            f"{folder}: class folders {same[0]!r} and {same[1]!r} are the same folder (a "
            "symlink or bind mount): each class needs its own images"
        )
    files: list[str] = []
    labels: list[int] = []
    empty = []
    for label, cls in enumerate(classes):
        found = sorted(_images_under(folder, cls))
        if not found:
            empty.append(cls)
        files += found
        labels += [label] * len(found)
    if empty:
        raise RunnerError(
            f"{folder}: class folder(s) {', '.join(map(repr, empty))} hold no images "
            f"({', '.join(IMAGE_SUFFIXES)}); add images or remove the folder(s)"
        )
    return classes, files, np.asarray(labels, np.int64)


def _first_repeat(names: list[str], stats: list[os.stat_result]) -> tuple[str, str] | None:
    """The first two of ``names`` that are one file or folder (same device and inode: a symlink,
    a hard link or a bind mount), by the ``os.stat`` of each."""
    seen: dict[tuple[int, int], str] = {}
    for name, st in zip(names, stats, strict=True):
        first = seen.setdefault(_identity(st), name)
        if first != name:
            return first, name
    return None


def _identity(st: os.stat_result) -> tuple[int, int]:
    """What makes two paths one file or folder."""
    return st.st_dev, st.st_ino


def _images_under(folder: Path, cls: str) -> list[str]:
    """Image files under ``folder/cls`` (relative to ``folder``), following symlinked folders
    once each (a link loop is not walked again) and skipping links that point nowhere.

    One ``scandir`` per folder; only a symlink costs a ``stat`` (a 10,000-image listing is most
    of a decode-cache hit)."""
    out: list[str] = []
    seen: set[tuple[int, int]] = set()
    stack = [(os.path.join(folder, cls), cls)]
    while stack:
        path, rel = stack.pop()
        try:
            folder_id = _identity(os.stat(path))
            if folder_id in seen:
                continue  # a symlink loop, or a folder reached twice: walked once
            seen.add(folder_id)
            entries = list(os.scandir(path))
        except OSError as e:
            log.warning("skipping %s: it cannot be read (%s)", path, e.strerror)
            continue
        for e in entries:
            if e.is_dir():  # follows a symlinked folder
                stack.append((e.path, f"{rel}/{e.name}"))
            elif _is_image(e.name) and not e.name.startswith("."):
                if e.is_symlink() and not os.path.exists(e.path):
                    log.warning("skipping %s: a symlink to nothing", e.path)
                    continue
                if not e.is_file():  # a named pipe or a device would block its reader forever
                    log.warning(
                        "skipping %s: not a regular file (a pipe, socket or device)", e.path
                    )
                    continue
                out.append(f"{rel}/{e.name}")
    return out


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def decode_key(
    listing: Listing, size: tuple[int, int], mode: str, test_fraction: float, split_seed: int
) -> str:
    """What the decoded array depends on: every file's path, size and mtime, the target size
    and colour mode, and (one tree) the split."""
    h = hashlib.sha256()
    split = [test_fraction, split_seed] if listing.layout == "one tree" else None
    h.update(json.dumps([DECODE_VERSION, str(listing.root), list(size), mode, split]).encode())
    for f, (nbytes, mtime) in zip(listing.files, listing.stats, strict=True):
        h.update(f"{f}\0{nbytes}\0{mtime}\n".encode())
    return h.hexdigest()[:16]
