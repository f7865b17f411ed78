"""A model file, opened: what recipes convert and what made the file."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass
class LoadedModel:
    """A user's model file, opened.

    ``model`` is what recipes convert (a tf_keras model, the translated twin of a Keras 3 model,
    or a :class:`SavedModelSource`); ``original`` is what made the file, and is what the float row
    is scored with (the Keras 3 model itself, the SavedModel's signature).
    """

    model: Any
    original: Any  # None until :meth:`reference` loads it (a translation served from a cache)
    kind: str  # tf_keras | keras3 | saved_model
    note: str = ""
    load_original: Callable[[], Any] | None = None

    def reference(self) -> Any:
        """What made the file (the Keras 3 model), loaded on first use when it was not needed
        to make :attr:`model` (a cached translation)."""
        if self.original is None and self.load_original is not None:
            self.original = self.load_original()
        return self.original


class TwinStore(Protocol):
    """Where a Keras 3 file's checked tf_keras translation is kept between runs (a cache entry
    keyed by the file's hash): the translation is made once per file, not once per job."""

    def get(self) -> tuple[Any, str] | None:
        """The stored translation and its note, or None."""

    def put(self, twin: Any, note: str) -> None:
        """Keep ``twin`` (a failure to keep it is a warning, never an error)."""

    def lock(self) -> AbstractContextManager[object]:
        """Held while one job translates, so concurrent jobs wait for it instead."""


def fits(expected: Sequence[int | None], given: Sequence[int]) -> bool:
    """Does a sample of shape ``given`` fit a model input of shape ``expected`` (None: any)?"""
    expected, given = tuple(expected), tuple(given)
    return len(expected) == len(given) and all(
        e is None or e == g for e, g in zip(expected, given, strict=True)
    )
