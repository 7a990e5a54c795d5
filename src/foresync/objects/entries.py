"""Entries of the record of objects: an exact name, or a prefix entry for a whole directory.

An *exact* entry is an object name, ``bucket/key``. A *prefix entry* stands for every name under
a directory: ``bucket/dir/`` followed by ``PREFIX_MARK``. It is the record's prediction from the
directory link (claim 20's "logical connection between storage objects"): a miss on
``bucket/dir/x`` may record the directory, and later first writes under it (names no exact
entry could predict) are hits. A prefix entry covers every name that starts with its directory,
subdirectories included, so an entry "may differ" means every object under it may differ.

The mark is a NUL, which no key may hold (objects/names.py refuses control characters), so a
prefix entry can never be mistaken for a name; it travels in the same places names do (the link's
STR, the record journal, the may-differ JSON). Pure: no I/O.
"""

from __future__ import annotations

PREFIX_MARK = "\x00"


def prefix_entry(directory: str) -> str:
    """The record entry for every name under ``directory`` (ending in ``/``)."""
    return directory + PREFIX_MARK


def is_prefix_entry(entry: str) -> bool:
    return entry.endswith(PREFIX_MARK)


def entry_directory(entry: str) -> str:
    """The directory a prefix entry covers (``bucket/dir/``)."""
    return entry[:-len(PREFIX_MARK)]


def directory_of(name: str) -> str:
    """The directory of a name: up to and including its last ``/`` (the bucket's root at least)."""
    return name[:name.rfind("/") + 1]


def covering_prefixes(name: str) -> list[str]:
    """The prefix entries that would cover ``name``, deepest directory first."""
    found = []
    end = name.rfind("/")
    while end >= 0:
        found.append(prefix_entry(name[:end + 1]))
        end = name.rfind("/", 0, end)
    return found


def covers(entry: str, name: str) -> bool:
    """Whether ``entry`` covers ``name``: the name itself, or a prefix entry above it."""
    if is_prefix_entry(entry):
        return name.startswith(entry_directory(entry)) and name != entry
    return entry == name


def shown(entry: str) -> str:
    """An entry for people: a prefix entry as ``bucket/dir/*``."""
    return entry_directory(entry) + "*" if is_prefix_entry(entry) else entry
