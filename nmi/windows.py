"""Time-boxed bindings: the `aadpodidentity.k8s.io/active-windows` annotation of an AzureIdentityBinding.

Parsed once per binding version (by the projection), evaluated against an injected wall clock (epoch seconds).
Pure: standard library only.

Grammar (WS is one or more spaces, tabs or newlines; leading and trailing WS is ignored everywhere):

    annotation := window ( ";" window )*        at most 32 windows, at most 1024 characters
    window     := days WS time-range WS zone    an empty window (";;", a trailing ";") is an error
    days       := day-item ( "," day-item )*    no WS inside: "Mon,Wed-Fri"
    day-item   := day | day "-" day             ranges run forward and may wrap: Fri-Mon = Fri Sat Sun Mon
    day        := Mon | Tue | Wed | Thu | Fri | Sat | Sun      (case-insensitive, English, three letters)
    time-range := HH:MM "-" HH:MM               two digits each; start 00:00-23:59, end 00:01-23:59 or 24:00
    zone       := an IANA time zone name, spelled as in the tz database (Europe/Berlin, UTC)

start == end is an error (a whole day is 00:00-24:00). end < start crosses midnight: the window opens on the
listed day and closes on the next one ("Fri 22:00-02:00" is Friday 22:00 to Saturday 02:00).

Semantics are wall-clock ones: a window is open at every instant whose local time in its zone lies in
[start, end) on a listed day (or, crossing midnight, in [00:00, end) on the day after a listed day). So around
DST changes: in a spring-forward gap the skipped wall times never happen (a window starting in the gap opens
when the gap ends, one lying wholly inside the gap does not open that day); in a fall-back overlap the repeated
wall times happen twice and a window covering them is open both times. A binding is active while any of its
windows is open; a malformed annotation makes it never active.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

ANNOTATION = "aadpodidentity.k8s.io/active-windows"
MAX_TEXT = 1024
MAX_WINDOWS = 32
DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")  # index = datetime.weekday()
HORIZON_DAYS = 15  # weekly windows, plus a week skipped when a window lies wholly in a DST gap

_DAYS = {name.lower(): index for index, name in enumerate(DAY_NAMES)}
_WS = re.compile(r"[ \t\r\n]+")
_RANGE = re.compile(r"([0-9]{2}):([0-9]{2})-([0-9]{2}):([0-9]{2})")
_ZONE = re.compile(r"[A-Za-z0-9_+-]{1,64}(/[A-Za-z0-9_+-]{1,64}){0,3}")


class WindowSyntaxError(ValueError):
    """The annotation does not follow the grammar; the message says where (safe to log: fragments are repr'd)."""


@dataclass(frozen=True, slots=True)
class Window:
    days: frozenset[int]  # datetime.weekday() values the window opens on
    start: int  # minutes after local midnight, 0..1439
    end: int  # minutes after local midnight, 1..1440; end < start crosses midnight
    zone: ZoneInfo

    def open_at_local(self, local: datetime) -> bool:
        second = local.hour * 3600 + local.minute * 60 + local.second + local.microsecond / 1e6
        weekday = local.weekday()
        if self.start < self.end:
            return weekday in self.days and self.start * 60 <= second < self.end * 60
        return ((weekday in self.days and second >= self.start * 60)
                or ((weekday - 1) % 7 in self.days and second < self.end * 60))

    def open_at(self, now: float) -> bool:
        return self.open_at_local(datetime.fromtimestamp(now, self.zone))

    def starts(self, first: date, days: int) -> list[float]:
        """Instants at which the local wall clock reads the start time on a listed day (both, in an overlap)."""
        found: list[float] = []
        for offset in range(days):
            day = first + timedelta(days=offset)
            if day.weekday() in self.days:
                found += {datetime.combine(day, time(self.start // 60, self.start % 60, fold=fold),
                                           tzinfo=self.zone).timestamp() for fold in (0, 1)}
        return found


@dataclass(frozen=True, slots=True)
class Opening:
    """When the next window opens, and in which zone (for rendering)."""

    at: float  # epoch seconds
    zone: ZoneInfo

    def iso(self) -> str:
        return datetime.fromtimestamp(self.at, self.zone).isoformat(timespec="seconds")


@dataclass(frozen=True, slots=True)
class ActiveWindows:
    windows: tuple[Window, ...]
    text: str  # the annotation as written (never sent to callers: it is the content of an API object)
    # The last answer of next_opening and when it was asked: it stays the answer until that opening, so refused
    # requests in a loop do not recompute it.
    _memo: list[tuple[float, Opening | None]] = field(default_factory=list, compare=False, repr=False)

    def active_at(self, now: float) -> bool:
        return any(window.open_at(now) for window in self.windows)

    def next_opening(self, now: float) -> Opening | None:
        """The earliest instant after `now` at which a window is open, within HORIZON_DAYS; None if none.

        An open period starts either where the wall clock reaches a window's start (in an overlap: either
        time it does) or at a DST transition (the end of a gap, or the jump back into an overlap), so only
        those instants need checking.
        """
        if self._memo:
            asked, answer = self._memo[0]
            if asked <= now and (answer is not None and now < answer.at):
                return answer
        best: Opening | None = None
        for window in self.windows:
            first = datetime.fromtimestamp(now, window.zone).date() - timedelta(days=1)
            candidates = window.starts(first, HORIZON_DAYS + 1) + _transitions(window.zone, now, HORIZON_DAYS)
            for at in candidates:
                if at > now and (best is None or at < best.at) and self.active_at(at):
                    best = Opening(at, window.zone)
        if not self.active_at(now):  # only then is `best` the answer for every instant up to it
            self._memo[:] = [(now, best)]
        return best


def parse_windows(text: str) -> ActiveWindows:
    if len(text) > MAX_TEXT:
        raise WindowSyntaxError(f"longer than {MAX_TEXT} characters")
    if not text.strip(" \t\r\n"):
        raise WindowSyntaxError("empty")
    items = text.split(";")
    if len(items) > MAX_WINDOWS:
        raise WindowSyntaxError(f"more than {MAX_WINDOWS} windows")
    return ActiveWindows(tuple(_window(item, position) for position, item in enumerate(items, 1)), text)


def _window(item: str, position: int) -> Window:
    stripped = item.strip(" \t\r\n")
    if not stripped:
        raise WindowSyntaxError(f"window {position} is empty")
    fields = _WS.split(stripped)
    if len(fields) != 3:
        raise WindowSyntaxError(f"window {position}: expected '<days> <HH:MM-HH:MM> <zone>', got {_quote(stripped)}")
    days, span, zone = fields
    start, end = _span(span, position)
    return Window(days=_days(days, position), start=start, end=end, zone=_zone(zone, position))


def _days(text: str, position: int) -> frozenset[int]:
    days: set[int] = set()
    for item in text.split(","):
        first, dash, last = item.partition("-")
        if first.lower() not in _DAYS or (dash and last.lower() not in _DAYS):
            raise WindowSyntaxError(f"window {position}: unknown day in {_quote(item)} (use Mon..Sun, Mon-Fri, Mon,Wed)")
        begin = _DAYS[first.lower()]
        length = ((_DAYS[last.lower()] - begin) % 7) + 1 if dash else 1
        days.update((begin + step) % 7 for step in range(length))
    return frozenset(days)


def _span(text: str, position: int) -> tuple[int, int]:
    match = _RANGE.fullmatch(text)
    if match is None:
        raise WindowSyntaxError(f"window {position}: bad time range {_quote(text)} (use HH:MM-HH:MM)")
    h1, m1, h2, m2 = (int(part) for part in match.groups())
    if h1 > 23 or m1 > 59 or m2 > 59 or h2 > 24 or (h2 == 24 and m2 != 0):
        raise WindowSyntaxError(f"window {position}: bad time in {_quote(text)} (00:00..23:59, end may be 24:00)")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end:
        raise WindowSyntaxError(f"window {position}: empty time range {_quote(text)} (a whole day is 00:00-24:00)")
    return start, end


def _zone(text: str, position: int) -> ZoneInfo:
    if not _ZONE.fullmatch(text) or ".." in text:
        raise WindowSyntaxError(f"window {position}: bad time zone name {_quote(text)}")
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise WindowSyntaxError(f"window {position}: unknown time zone {_quote(text)}") from None


def _quote(text: str) -> str:
    return repr(text[:40] + ("..." if len(text) > 40 else ""))


def _offset(zone: ZoneInfo, at: float) -> timedelta | None:
    return datetime.fromtimestamp(at, zone).utcoffset()


def _transitions(zone: ZoneInfo, now: float, days: int) -> list[float]:
    """UTC-offset changes of `zone` from a day before `now` to `days` after, to the second (6-hour probes, then
    bisection: zones change at most twice a year, never twice within 6 hours)."""
    step = 6 * 3600
    found = []
    probe = now - 86400
    before = _offset(zone, probe)
    for _ in range((days + 1) * 4):
        after = _offset(zone, probe + step)
        if after != before:
            low, high = int(probe), int(probe + step) + 1
            while high - low > 1:
                middle = (low + high) // 2
                if _offset(zone, middle) == before:
                    low = middle
                else:
                    high = middle
            found.append(float(high))
        probe, before = probe + step, after
    return found
