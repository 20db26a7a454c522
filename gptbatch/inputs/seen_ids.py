"""The custom_ids a scan has seen, in 16-32 bytes each instead of a dict entry's 150.

An open-addressing table of two int64 arrays keyed by Python's hash of the custom_id: the
hash, and where the request was first seen (file index << 48 | byte offset of its line).
A matching hash is only a candidate: the caller confirms it by reading that line back.
"""

from __future__ import annotations

from array import array

_EMPTY = 0
_INITIAL_SLOTS = 1 << 14
OFFSET_BITS = 48


def _slot_hash(custom_id: str) -> int:
    return hash(custom_id) or 1  # 0 marks an empty slot


class SeenIds:
    """custom_id hash -> where first seen (file index << 48 | offset); candidates only."""

    def __init__(self) -> None:
        self.count = 0
        self._allocate(_INITIAL_SLOTS)

    def _allocate(self, slots: int) -> None:
        self._mask = slots - 1
        self._hashes = array("q", bytes(8 * slots))
        self._where = array("q", bytes(8 * slots))

    def _probe(self, h: int) -> tuple[int, int | None]:
        """(slot, where) for hash h: its slot and sighting, or the empty slot it would take."""
        hashes, mask = self._hashes, self._mask
        i = h & mask
        while True:
            found = hashes[i]
            if found == h:
                return i, self._where[i]
            if found == _EMPTY:
                return i, None
            i = (i + 1) & mask

    def find(self, custom_id: str) -> int | None:
        """Where the first request seen whose custom_id has the same hash is, if any."""
        return self._probe(_slot_hash(custom_id))[1]

    def first_or_add(self, custom_id: str, where: int) -> int | None:
        """find(custom_id); when nothing is found, remember this sighting (one probe)."""
        h = _slot_hash(custom_id)
        i, first = self._probe(h)
        if first is not None:
            return first
        hashes, mask = self._hashes, self._mask
        if 3 * (self.count + 1) > 2 * (mask + 1):
            self._grow()
            self._put(h, where)
        else:
            hashes[i] = h
            self._where[i] = where
        self.count += 1
        return None

    def _put(self, h: int, where: int) -> None:
        hashes, mask = self._hashes, self._mask
        i = h & mask
        while hashes[i] != _EMPTY:
            i = (i + 1) & mask
        hashes[i] = h
        self._where[i] = where

    def _grow(self) -> None:
        hashes, where = self._hashes, self._where
        self._allocate(2 * (self._mask + 1))
        for i, h in enumerate(hashes):
            if h != _EMPTY:
                self._put(h, where[i])
