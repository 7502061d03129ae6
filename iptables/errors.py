"""Errors of the iptables package. The supervisor retries `IptablesError`; `BackendUnavailable` is for start-up."""

from __future__ import annotations


class IptablesError(Exception):
    """Reading or changing the rules failed; usually transient (lock contention, a concurrent commit)."""


class XtablesLockTimeout(IptablesError):
    """Another process (kube-proxy, an iptables command) held /run/xtables.lock for longer than we wait."""


class BackendUnavailable(Exception):
    """The chosen iptables backend cannot be used on this node. The message is one line, fit for the operator."""
