"""Raw id <-> contiguous index vocabularies: the single place where ids are mapped."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from driftrank.errors import DataError, UnknownIdError

__all__ = ["MAX_ID_CHARS", "IdMap", "check_raw_id"]

# Ids longer than this are refused: a vocabulary stores its string ids at the width of the
# longest, so one megabyte-long id would make every id of the vocabulary that long.
MAX_ID_CHARS = 1024
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# Floats hold integers exactly up to here; beyond, distinct ids could be one float.
_EXACT_FLOAT_INT = 2**53


def check_raw_id(raw: object, kind: str = "item") -> int | str:
    """``raw`` as a plain ``int`` or ``str`` id, or :class:`DataError` saying why it cannot be one.

    Integers (Python or numpy, not ``bool``) and strings are ids; a float is accepted only when
    it holds an integer exactly (``42.0``, as pandas writes integer ids next to missing values).
    Strings must not contain NUL characters (numpy's string arrays drop trailing NULs, so
    ``"a\\x00"`` and ``"a"`` would merge) and may have at most :data:`MAX_ID_CHARS` characters.
    """
    if isinstance(raw, (bool, np.bool_)):
        raise DataError(f"{kind} ids must be integers or strings, got the boolean {raw!r}")
    if isinstance(raw, (int, np.integer)):
        return int(raw)
    if isinstance(raw, str):
        if "\0" in raw:
            raise DataError(f"{kind} id {raw[:60]!r} contains a NUL character; ids must not")
        if len(raw) > MAX_ID_CHARS:
            raise DataError(
                f"{kind} id of {len(raw)} characters is too long (at most {MAX_ID_CHARS}): {raw[:40]!r}..."
            )
        return str(raw)
    if isinstance(raw, (float, np.floating)):
        v = float(raw)
        if math.isfinite(v) and v == round(v) and abs(v) <= _EXACT_FLOAT_INT:
            return int(v)
        raise DataError(
            f"{kind} ids must be integers or strings, got the float {raw!r} (not an integer below 2**53)"
        )
    raise DataError(f"{kind} ids must be integers or strings, got {type(raw).__name__} {raw!r:.60}")


class IdMap:
    """An immutable vocabulary of raw ids (ints or strings) numbered ``0..len-1``.

    ``ids`` keeps the raw ids in index order; ``index(raw)`` maps back. Integer ids stay
    integers (``int64``), anything else is kept as strings, so a CSV with ``"42"`` and a frame
    with ``42`` name the same item only when both are read with the same dtype. Ids that are
    neither (booleans, non-integer floats, ...) raise :class:`DataError` wherever they are
    given, as do strings with NUL characters or longer than :data:`MAX_ID_CHARS`.
    """

    __slots__ = ("_ids", "_int", "_lookup", "kind")

    def __init__(self, ids: Sequence[Any] | np.ndarray, kind: str = "item") -> None:
        arr = np.asarray(ids)
        if arr.dtype.kind in "iu":
            if arr.dtype.kind == "u" and len(arr) and int(arr.max()) > _INT64_MAX:
                raise DataError(f"{kind} id {int(arr.max())} does not fit a 64-bit integer")
            arr = arr.astype(np.int64)
        elif arr.dtype.kind == "U":
            if arr.dtype.itemsize // 4 > MAX_ID_CHARS:
                longest = max(arr.tolist(), key=len)
                check_raw_id(longest, kind)
        else:
            checked = [check_raw_id(x, kind) for x in arr.tolist()]
            if checked and all(isinstance(x, int) for x in checked):
                arr = _int_array(checked, kind)
            else:
                arr = np.array([str(x) for x in checked], dtype=str) if checked else arr.astype(str)
        self._ids = arr
        self._ids.setflags(write=False)
        self._int = arr.dtype.kind == "i"
        self.kind = kind
        self._lookup: dict[Any, int] = {v: i for i, v in enumerate(arr.tolist())}
        if len(self._lookup) != len(arr):
            raise DataError(f"{kind} ids must be unique")

    @property
    def ids(self) -> np.ndarray:
        """Raw ids in index order (read-only)."""
        return self._ids

    @property
    def is_integer(self) -> bool:
        """Whether the raw ids are integers."""
        return self._int

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, raw: object) -> bool:
        return self._coerce(raw) in self._lookup

    def _coerce(self, raw: object) -> Any:
        """The lookup key of ``raw``: an int for an integer vocabulary (digit strings too, as
        the loaders read them), a string otherwise. Raises :class:`DataError` for what cannot
        be an id at all."""
        # Fast path for the common case (exactly int or str, already valid): no checks to run.
        t = type(raw)
        if t is int and self._int:
            return raw
        if t is str and not self._int:
            text = str(raw)  # the same object
            if len(text) <= MAX_ID_CHARS and "\0" not in text:
                return text
        v = check_raw_id(raw, self.kind)
        if self.is_integer:
            if isinstance(v, str) and v.strip().lstrip("-").isdigit():
                return int(v)
            return v
        return str(v)

    def index(self, raw: object) -> int:
        """Index of one raw id; :class:`UnknownIdError` if it is not in the vocabulary."""
        i = self._lookup.get(self._coerce(raw), -1)
        if i < 0:
            raise UnknownIdError(f"unknown {self.kind} id {raw!r:.80}")
        return i

    def get(self, raw: object, default: int = -1) -> int:
        """Index of one raw id, or ``default`` when it is unknown (a value that cannot be an id
        at all raises :class:`DataError`)."""
        return self._lookup.get(self._coerce(raw), default)

    def indices(self, raws: Iterable[object], *, missing: int | None = None) -> np.ndarray:
        """Indices (``int64[n]``) of many raw ids; unknown ids raise unless ``missing`` is given."""
        out = []
        for raw in raws:
            i = self.get(raw, -1)
            if i < 0:
                if missing is None:
                    raise UnknownIdError(f"unknown {self.kind} id {raw!r:.80}")
                i = missing
            out.append(i)
        return np.asarray(out, dtype=np.int64)

    def extend(self, raws: Iterable[object]) -> IdMap:
        """A new vocabulary with ``raws`` appended (ids already present are skipped). Nothing
        is cut short: the string array widens to the longest id."""
        new = [r for r in dict.fromkeys(self._coerce(r) for r in raws) if r not in self._lookup]
        if not new:
            return self
        if self.is_integer:
            bad = next((r for r in new if not isinstance(r, int)), None)
            if bad is not None:
                raise DataError(f"{self.kind} ids of this model are integers, got the string {bad!r:.80}")
            added = _int_array(new, self.kind)
        else:
            added = np.array(new, dtype=str)
        return IdMap(np.concatenate([self._ids, added]), self.kind)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdMap) and np.array_equal(self._ids, other._ids)

    def __hash__(self) -> int:  # pragma: no cover - vocabularies are not dict keys
        return hash((self.kind, len(self._ids)))

    def __repr__(self) -> str:
        return f"IdMap({self.kind}, n={len(self)})"


def _int_array(values: Sequence[Any], kind: str) -> np.ndarray:
    big = next((v for v in values if not _INT64_MIN <= v <= _INT64_MAX), None)
    if big is not None:
        raise DataError(f"{kind} id {big} does not fit a 64-bit integer; give such ids as strings")
    return np.array(values, dtype=np.int64)
