"""Malformed `aadpodidentity.k8s.io/active-windows` annotations, reported where operators look: one log line and
one Warning Event (when audit Events are on) per binding and malformed value — never per request — and the
gauge `nmi_binding_window_errors` (bindings currently malformed, hence never active)."""

from __future__ import annotations

import logging
from typing import Callable, Iterable

from .model import Binding
from .windows import ANNOTATION

log = logging.getLogger(__name__)

WarnBinding = Callable[[Binding, str], None]


class WindowErrorReporter:
    def __init__(self, *, set_gauge: Callable[[int], None], warn: WarnBinding | None = None) -> None:
        self._set_gauge = set_gauge
        self._warn = warn
        self._reported: dict[tuple[str, str], str] = {}

    def review(self, bindings: Iterable[Binding]) -> None:
        """After the bindings changed: report what is newly malformed, forget what was fixed or deleted."""
        malformed = {(b.namespace, b.name): b for b in bindings if b.windows_error}
        for key, binding in malformed.items():
            if self._reported.get(key) == binding.windows_error:
                continue
            message = f"malformed {ANNOTATION} annotation, the binding is never active: {binding.windows_error}"
            log.warning("AzureIdentityBinding %s/%s: %s", key[0], key[1], message)
            if self._warn is not None:
                self._warn(binding, message)
        self._reported = {key: binding.windows_error for key, binding in malformed.items()}
        self._set_gauge(len(malformed))
