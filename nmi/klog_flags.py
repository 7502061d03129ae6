"""Upstream flags for features nmi does not have: klog's log files and header options, Go's pprof endpoint.

A manifest carried over from aad-pod-identity often sets one of them (`--logtostderr=true`,
`--alsologtostderr`, `--enableProfile=false`). Refusing those would crash-loop the DaemonSet for nothing, so a
value that changes nothing here is accepted with one warning line; a value that would need the missing feature
(`--log_dir=/x`, `--enableProfile=true`, `--logtostderr=false`) is refused, never silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

NO_FILES = "nmi logs only to stderr and writes no log files"
OWN_HEADERS = "nmi's text lines have their own header (use --log-format=json for machine-readable lines)"
_SEVERITIES = ("info", "warning", "error", "fatal", "0", "1", "2", "3")


class FlagRefused(ValueError):
    """The flag's value asks for a feature nmi does not provide; the message names the flag."""


def parse_bool(text: str) -> bool:
    """pflag's boolean spellings; the one parser for nmi's own flags (cli) and the upstream compatibility flags."""
    lowered = text.strip().lower()
    if lowered in ("true", "t", "1"):
        return True
    if lowered in ("false", "f", "0"):
        return False
    raise ValueError(f"invalid boolean {text!r} (use true or false)")


def _size(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must be >= 0, got {text!r}")
    return value


def _severity(text: str) -> str:
    if text.strip().lower() not in _SEVERITIES:
        raise ValueError(f"{text!r} is not a severity (INFO, WARNING, ERROR, FATAL or 0-3)")
    return text.strip()


def _always(_value: object) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class _Rule:
    parse: Callable[[str], object]
    harmless: Callable[[object], bool]  # True when the value changes nothing in nmi
    reason: str
    is_bool: bool = False  # a bare `--flag` means true and never takes the next argument


RULES: dict[str, _Rule] = {
    "enableProfile": _Rule(parse_bool, lambda on: not on, "nmi has no profiling endpoint", is_bool=True),
    "logtostderr": _Rule(parse_bool, lambda on: on is True, NO_FILES, is_bool=True),
    "alsologtostderr": _Rule(parse_bool, _always, NO_FILES, is_bool=True),
    "log_dir": _Rule(str, lambda path: path == "", NO_FILES),
    "log_file": _Rule(str, lambda path: path == "", NO_FILES),
    "log_file_max_size": _Rule(_size, _always, NO_FILES),
    "skip_log_headers": _Rule(parse_bool, _always, NO_FILES, is_bool=True),
    "one_output": _Rule(parse_bool, _always, NO_FILES, is_bool=True),
    "stderrthreshold": _Rule(_severity, _always, "every line already goes to stderr"),
    "skip_headers": _Rule(parse_bool, _always, OWN_HEADERS, is_bool=True),
    "add_dir_header": _Rule(parse_bool, _always, OWN_HEADERS, is_bool=True),
    "vmodule": _Rule(str, lambda spec: spec == "", "per-file verbosity is not supported; use -v"),
    "log_backtrace_at": _Rule(str, lambda spot: spot in ("", ":0"), "stack traces at a source line are not supported"),
}


def extract(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split `--`-style argv into (the rest, for the main parser; one warning line per harmless flag).

    Raises FlagRefused for a value that needs a missing feature, ValueError (naming the flag) for a bad value."""
    rest: list[str] = []
    warnings: list[str] = []
    args = list(argv)
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        name, equals, text = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        rule = RULES.get(name)
        if rule is None:
            rest.append(arg)
            continue
        if not equals:
            if rule.is_bool:
                text = "true"
            elif index < len(args):  # pflag's `--name value` form
                text, index = args[index], index + 1
            else:
                raise ValueError(f"flag --{name} needs a value")
        try:
            value = rule.parse(text)
        except ValueError as exc:
            raise ValueError(f"argument --{name}: {exc}") from None
        shown = f"--{name}={text}"
        if not rule.harmless(value):
            raise FlagRefused(f"flag {shown} is not supported: {rule.reason}")
        warnings.append(f"flag {shown} has no effect: {rule.reason}")
    return rest, warnings


def help_epilog() -> str:
    return ("Accepted for upstream manifests, with a warning, when their value changes nothing: "
            + ", ".join(f"--{name}" for name in RULES)
            + ". A value that needs a missing feature (log files, pprof, --vmodule) is refused.")
