"""Which object names a written one predicts: the logical links between objects (claims 20, 40, 60).

Claim 20 records "the locations ... using an object-based storage technique" and chooses the
further locations "based on a logical connection between storage objects". For blocks the link
is adjacency (extent e, then e+1); objects have no addresses, so the links are in their names and
in their history:

* ``multipart``: a part of an upload predicts the upload's next parts (``part_name``);
* ``sequence``: a name ending in a number, written right after the previous number, predicts
  the next numbers with the same padding (``cam1/frame-000123.jpg`` -> ``frame-000124.jpg``);
* ``history``: names written right after this one before (a manifest after its data object, an
  index after its table), learned from every write, bounded;
* ``prefix``: the other names recently written under the same "directory" (up to the last
  ``/``), most recent first: a tenant's or a day's working set. The same link also predicts the
  directory itself (``directory``): a name written beside others recently written in its
  directory says the directory is being written, and the record may then hold a *prefix entry*
  for all of it (objects/entries.py), which covers names never written before. On the bench's
  small PUTs most misses were such first writes (bench/objects_latency.py).

``links`` takes them surest first (multipart, sequence, history, then a few siblings). A predictor is pure and
deterministic: both sites that observe the same writes in the same order predict the same names,
and a wrong prediction only costs a record slot, never correctness. Memory is bounded everywhere
(``*_MAX`` constants), oldest forgotten first. The numbers behind the choice are in
``bench/objects_predict.py`` (miss ratio per predictor against no prediction).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable

from foresync.objects import parts

PREFIX_KEYS_MAX = 64  # names remembered per prefix
PREFIXES_MAX = 4096
SUCCESSORS_MAX = 4  # followers remembered per name
HISTORY_MAX = 65536  # names with followers remembered
_NUMBER_RE = re.compile(r"^(.*?)(\d+)(\D*)$")
_PART_RE = re.compile(r"^([^\x00]+\x00[^\x00]+\x00)(\d{5})$")  # objects/parts.py's names


def part_name(name: str, upload_id: str, number: int) -> str:
    """The record name of one part of a multipart upload of ``name`` (bucket/key)."""
    return parts.part_name(name.partition("/")[0], upload_id, number)


class ObjectPredictor:
    """No prediction: a miss adds only the name written."""

    name = "none"

    def candidates(self, written: str, budget: int) -> list[str]:
        """Names to add to the record with ``written``, best first, at most ``budget``."""
        return []

    def observe(self, written: str) -> None:
        """``written`` was written (in the order the primary sequenced it): learn from it."""

    def directory(self, written: str) -> str | None:
        """The directory (``bucket/dir/``) to record whole with ``written``, or None."""
        return None


class MultipartPredictor(ObjectPredictor):
    name = "multipart"

    def candidates(self, written: str, budget: int) -> list[str]:
        match = _PART_RE.match(written)
        if match is None:
            return []
        stem, number = match.group(1), int(match.group(2))
        return [f"{stem}{n:05d}" for n in range(number + 1, min(number + 1 + budget, 10001))]


class SequencePredictor(ObjectPredictor):
    """Only a run predicts: the name must follow the last number written under the same stem
    (``frame-000123`` after ``frame-000122``), so names that merely end in digits (``obj-7`` of a
    random key set) do not fill the record with guesses (bench: 0.337 misses against 0.214 with
    no prediction on small PUTs before this rule)."""

    name = "sequence"

    def __init__(self) -> None:
        self._last: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._run = False

    def candidates(self, written: str, budget: int) -> list[str]:
        parsed = _numbered(written)
        if parsed is None or not self._in_run(parsed):
            return []
        head, width, number, tail = parsed
        return [f"{head}{n:0{width}d}{tail}" for n in range(number + 1, number + 1 + budget)]

    def _in_run(self, parsed: tuple[str, int, int, str]) -> bool:
        head, _, number, tail = parsed
        last = self._last.get((head, tail))
        return last is not None and number in (last, last + 1)

    def observe(self, written: str) -> None:
        parsed = _numbered(written)
        if parsed is None:
            return
        head, _, number, tail = parsed
        self._last.pop((head, tail), None)
        self._last[(head, tail)] = number
        while len(self._last) > PREFIXES_MAX:
            self._last.popitem(last=False)


def _numbered(name: str) -> tuple[str, int, int, str] | None:
    """(head, digits' width, number, tail) of a name ending in a number; parts are excluded."""
    if _PART_RE.match(name):
        return None  # parts are the multipart predictor's
    match = _NUMBER_RE.match(name)
    if match is None:
        return None
    head, digits, tail = match.groups()
    return head, len(digits), int(digits), tail


class HistoryPredictor(ObjectPredictor):
    name = "history"

    def __init__(self) -> None:
        self._followers: OrderedDict[str, OrderedDict[str, None]] = OrderedDict()
        self._last: str | None = None

    def candidates(self, written: str, budget: int) -> list[str]:
        found: list[str] = []
        frontier = [written]
        while frontier and len(found) < budget:  # breadth first along what followed before
            following = []
            for name in frontier:
                for follower in reversed(self._followers.get(name, {})):
                    if follower != written and follower not in found and len(found) < budget:
                        found.append(follower)
                        following.append(follower)
            frontier = following
        return found

    def observe(self, written: str) -> None:
        if self._last is not None and self._last != written:
            followers = self._followers.pop(self._last, None) or OrderedDict()
            followers.pop(written, None)
            followers[written] = None
            while len(followers) > SUCCESSORS_MAX:
                followers.popitem(last=False)
            self._followers[self._last] = followers
            while len(self._followers) > HISTORY_MAX:
                self._followers.popitem(last=False)
        self._last = written


class PrefixPredictor(ObjectPredictor):
    name = "prefix"

    def __init__(self) -> None:
        self._by_prefix: OrderedDict[str, OrderedDict[str, None]] = OrderedDict()

    def candidates(self, written: str, budget: int) -> list[str]:
        names: OrderedDict[str, None] = self._by_prefix.get(_prefix_of(written), OrderedDict())
        return [n for n in reversed(names) if n != written][:budget]

    def directory(self, written: str) -> str | None:
        """``written``'s directory if another name was written in it recently: a directory
        being written, not a lone name (bench/objects_predict.py, ``prefix entries``)."""
        prefix = _prefix_of(written)
        names = self._by_prefix.get(prefix)
        return prefix if names is not None and any(n != written for n in names) else None

    def observe(self, written: str) -> None:
        prefix = _prefix_of(written)
        names = self._by_prefix.pop(prefix, None) or OrderedDict()
        names.pop(written, None)
        names[written] = None
        while len(names) > PREFIX_KEYS_MAX:
            names.popitem(last=False)
        self._by_prefix[prefix] = names
        while len(self._by_prefix) > PREFIXES_MAX:
            self._by_prefix.popitem(last=False)


class LinksPredictor(ObjectPredictor):
    """All four links, the surest first: the next parts of an upload and a running sequence
    (both exact when they apply) but leaving ``HISTORY_SHARE`` slots, then history, then the
    rest of the sure ones, then at most ``PREFIX_SHARE`` siblings in what is left (the weakest
    guess, and the quickest to crowd hot names out of the record)."""

    name = "links"
    PREFIX_SHARE = 2
    HISTORY_SHARE = 2

    def __init__(self) -> None:
        self._sure: list[ObjectPredictor] = [MultipartPredictor(), SequencePredictor()]
        self._history = HistoryPredictor()
        self._prefix = PrefixPredictor()

    def candidates(self, written: str, budget: int) -> list[str]:
        if _PART_RE.match(written):  # a part predicts its upload's next parts, nothing else
            return self._sure[0].candidates(written, budget)
        sure = [n for p in self._sure for n in p.candidates(written, budget)]
        head = max(budget - self.HISTORY_SHARE, 1)  # history always gets a look in
        lists = [sure[:head], self._history.candidates(written, budget), sure[head:],
                 self._prefix.candidates(written, min(budget, self.PREFIX_SHARE))]
        found: list[str] = []
        for name in (n for items in lists for n in items):
            if len(found) >= budget:
                break
            if name != written and name not in found:
                found.append(name)
        return found

    def observe(self, written: str) -> None:
        """Parts are not history or siblings: an upload id is never written again, and parts
        interleaved with other writes would break the history of those and crowd siblings."""
        is_part = _PART_RE.match(written) is not None
        for predictor in (*self._sure, *(() if is_part else (self._history, self._prefix))):
            predictor.observe(written)

    def directory(self, written: str) -> str | None:
        return self._prefix.directory(written)


def _prefix_of(name: str) -> str:
    return name[:name.rfind("/") + 1]


PREDICTORS: dict[str, Callable[[], ObjectPredictor]] = {
    "none": ObjectPredictor,
    "multipart": MultipartPredictor,
    "sequence": SequencePredictor,
    "history": HistoryPredictor,
    "prefix": PrefixPredictor,
    "links": LinksPredictor,
}
