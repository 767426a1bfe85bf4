"""Raw id <-> contiguous index vocabularies: the single place where ids are mapped."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from driftrank.errors import UnknownIdError


class IdMap:
    """An immutable vocabulary of raw ids (ints or strings) numbered ``0..len-1``.

    ``ids`` keeps the raw ids in index order; ``index(raw)`` maps back. Integer ids stay
    integers (``int64``), anything else is kept as strings, so a CSV with ``"42"`` and a frame
    with ``42`` name the same item only when both are read with the same dtype.
    """

    __slots__ = ("_ids", "_lookup", "kind")

    def __init__(self, ids: Sequence[Any] | np.ndarray, kind: str = "item") -> None:
        arr = np.asarray(ids)
        if arr.dtype.kind in "iu":
            arr = arr.astype(np.int64)
        elif arr.dtype.kind != "U":
            arr = arr.astype(str)
        self._ids = arr
        self._ids.setflags(write=False)
        self.kind = kind
        self._lookup: dict[Any, int] = {v: i for i, v in enumerate(arr.tolist())}
        if len(self._lookup) != len(arr):
            raise ValueError(f"{kind} ids must be unique")

    @property
    def ids(self) -> np.ndarray:
        """Raw ids in index order (read-only)."""
        return self._ids

    @property
    def is_integer(self) -> bool:
        """Whether the raw ids are integers."""
        return self._ids.dtype.kind == "i"

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, raw: object) -> bool:
        return self._coerce(raw) in self._lookup

    def _coerce(self, raw: object) -> Any:
        if self.is_integer:
            if isinstance(raw, (int, np.integer)) and not isinstance(raw, bool):
                return int(raw)
            if isinstance(raw, str) and raw.strip().lstrip("-").isdigit():
                return int(raw)
            return raw
        return str(raw)

    def index(self, raw: object) -> int:
        """Index of one raw id; :class:`UnknownIdError` if it is not in the vocabulary."""
        try:
            return self._lookup[self._coerce(raw)]
        except (KeyError, TypeError):
            raise UnknownIdError(f"unknown {self.kind} id {raw!r}") from None

    def get(self, raw: object, default: int = -1) -> int:
        """Index of one raw id, or ``default`` when it is unknown."""
        try:
            return self._lookup.get(self._coerce(raw), default)
        except TypeError:
            return default

    def indices(self, raws: Iterable[object], *, missing: int | None = None) -> np.ndarray:
        """Indices (``int64[n]``) of many raw ids; unknown ids raise unless ``missing`` is given."""
        out = []
        for raw in raws:
            i = self.get(raw, -1)
            if i < 0:
                if missing is None:
                    raise UnknownIdError(f"unknown {self.kind} id {raw!r}")
                i = missing
            out.append(i)
        return np.asarray(out, dtype=np.int64)

    def extend(self, raws: Iterable[object]) -> IdMap:
        """A new vocabulary with ``raws`` appended (ids already present are skipped)."""
        new = [r for r in dict.fromkeys(self._coerce(r) for r in raws) if r not in self._lookup]
        if not new:
            return self
        if self.is_integer and not all(isinstance(r, int) for r in new):
            raise UnknownIdError(f"{self.kind} ids are integers, got {new[0]!r}")
        return IdMap(np.concatenate([self._ids, np.asarray(new, dtype=self._ids.dtype)]), self.kind)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdMap) and np.array_equal(self._ids, other._ids)

    def __hash__(self) -> int:  # pragma: no cover - vocabularies are not dict keys
        return hash((self.kind, len(self._ids)))

    def __repr__(self) -> str:
        return f"IdMap({self.kind}, n={len(self)})"
