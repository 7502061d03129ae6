"""Command line: the upstream NMI flag names (pflag/klog style) parsed into a frozen `Settings`.

Bad values exit 2 with one line naming the flag; flags nmi does not implement are refused the same way.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import sys
from dataclasses import dataclass
from typing import Callable, Mapping, NoReturn, Sequence

from . import __version__, klog_flags
from .klog_flags import parse_bool

MODES = ("standard", "managed")


@dataclass(frozen=True, slots=True)
class Settings:
    node: str = ""
    listen_address: str = "127.0.0.1"
    port: int = 2579
    metadata_ip: str = "169.254.169.254"
    metadata_port: int = 80
    ipt_update_interval: int = 60
    force_namespaced: bool = False
    mic_namespace: str = "default"
    probe_port: int = 8080
    retry_attempts_for_created: int = 16
    retry_attempts_for_assigned: int = 4
    find_identity_retry_interval: int = 5
    scale_features: bool = True
    block_instance_metadata: bool = False
    metadata_header_required: bool = True
    prometheus_port: int = 9090
    operation_mode: str = "standard"
    allow_kubenet: bool = False
    kubelet_config: str = "/etc/default/kubelet"
    set_retry_after_header: bool = False
    conntrack_deletion: bool = False
    log_format: str = "text"
    verbosity: int = 0
    kubeconfig: str = ""
    custom_user_agent: str = ""
    # nmi's own flags (no upstream equivalent)
    manage_iptables: bool = True
    fail_closed: bool = False
    node_startup_taint: str = ""
    iptables_backend: str = "auto"
    audit_events: bool = True
    workload_identity: bool = False
    workload_identity_tenant_id: str = ""
    workload_identity_authority_host: str = "https://login.microsoftonline.com/"
    allow_cross_namespace_secrets: bool = False
    allowed_authority_hosts: tuple[str, ...] = ()
    # One line per accepted upstream flag that changes nothing here (klog_flags); logged once logging is set up.
    flag_warnings: tuple[str, ...] = ()

    @property
    def dnat_target(self) -> str:
        return "127.0.0.1" if self.listen_address == "0.0.0.0" else self.listen_address

    @property
    def identity_wait_seconds(self) -> float:
        """Standard mode: how long a request may wait for MIC to assign the pod's identity."""
        return float((self.retry_attempts_for_created + self.retry_attempts_for_assigned) * self.find_identity_retry_interval)


class UsageError(Exception):
    pass


class VersionRequested(Exception):
    pass


def parse_port(text: str) -> int:
    port = int(text)
    if not 0 < port < 65536:
        raise ValueError(f"invalid port {text!r}")
    return port


def parse_ip(text: str) -> str:
    return str(ipaddress.IPv4Address(text.strip()))


def parse_non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must be >= 0, got {text!r}")
    return value


def parse_positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(f"must be > 0, got {text!r}")
    return value


def parse_https_url(text: str) -> str:
    """An https URL with a host, normalised to end in `/` (MSAL authorities are <host>/<tenant>)."""
    from urllib.parse import urlsplit

    parts = urlsplit(text.strip())
    if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"{text!r} is not an https URL")
    url = text.strip()
    return url if url.endswith("/") else url + "/"


_HOST = re.compile(r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


def parse_hosts(text: str) -> tuple[str, ...]:
    """Comma-separated host names or IP addresses, no scheme, port or path (`login.example,127.0.0.1`)."""
    hosts = []
    for item in (part.strip().lower() for part in text.split(",")):
        if not item:
            continue
        if not _HOST.match(item) and not _is_ip(item):
            raise ValueError(f"{item!r} is not a host name (give hosts only, without https:// or a port)")
        hosts.append(item)
    return tuple(dict.fromkeys(hosts))


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


_TAINT_KEY = re.compile(r"^(?:[a-z0-9]([-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                        r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


def parse_taint_key(text: str) -> str:
    """A Kubernetes taint key: an optional DNS subdomain prefix (<= 253) and `/`, then a name of <= 63 characters."""
    key = text.strip()
    if key and (not _TAINT_KEY.match(key) or ("/" in key and len(key.partition("/")[0]) > 253)):
        raise ValueError(f"{text!r} is not a taint key (e.g. example.com/not-ready)")
    return key


def choice(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        lowered = text.strip().lower()
        if lowered not in allowed:
            raise ValueError(f"{text!r} is not one of {', '.join(allowed)}")
        return lowered

    return parse


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _typed(parse: Callable[[str], object], flag: str) -> Callable[[str], object]:
    def convert(text: str) -> object:
        try:
            return parse(text)
        except (ValueError, TypeError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = flag
    return convert


def _build_parser() -> _Parser:
    p = _Parser(prog="nmi", description="Node-level Azure token broker (drop-in for aad-pod-identity NMI)",
                epilog=klog_flags.help_epilog(), allow_abbrev=False)

    metavars: dict[Callable[[str], object], str] = {parse_port: "PORT", parse_ip: "IP", parse_positive: "N",
                                                    parse_non_negative: "N"}

    def flag(name: str, dest: str, parse: Callable[[str], object], default: object, help_: str) -> None:
        p.add_argument(f"--{name}", dest=dest, type=_typed(parse, f"--{name}"), default=default,
                       metavar=metavars.get(parse, "VALUE"), help=f"{help_} (default {default!r})")

    def switch(name: str, dest: str, default: bool, help_: str) -> None:
        p.add_argument(f"--{name}", dest=dest, nargs="?", const=True, type=_typed(parse_bool, f"--{name}"),
                       metavar="true|false", default=default, help=f"{help_} (default {str(default).lower()})")

    flag("node", "node", str, "", "name of this node (pods are watched with spec.nodeName=<node>)")
    flag("nmi-listen-address", "listen_address", parse_ip, "127.0.0.1", "address the token server binds")
    flag("nmi-port", "port", parse_port, 2579, "token server port")
    flag("metadata-ip", "metadata_ip", parse_ip, "169.254.169.254", "instance metadata service IP")
    flag("metadata-port", "metadata_port", parse_port, 80, "instance metadata service port")
    flag("ipt-update-interval-sec", "ipt_update_interval", parse_positive, 60, "seconds between iptables checks")
    switch("forceNamespaced", "force_namespaced", False, "namespaced mode (also env FORCENAMESPACED=true)")
    flag("MICNamespace", "mic_namespace", str, "default", "namespace of the MIC deployment")
    flag("http-probe-port", "probe_port", parse_port, 8080, "health probe port (/healthz, /readyz)")
    flag("retry-attempts-for-created", "retry_attempts_for_created", parse_non_negative, 16, "standard mode wait budget")
    flag("retry-attempts-for-assigned", "retry_attempts_for_assigned", parse_non_negative, 4, "standard mode wait budget")
    flag("find-identity-retry-interval", "find_identity_retry_interval", parse_non_negative, 5, "seconds per attempt")
    switch("enableScaleFeatures", "scale_features", True, "watch only this node's AzureAssignedIdentities")
    switch("block-instance-metadata", "block_instance_metadata", False, "answer 403 to /metadata/instance")
    switch("metadata-header-required", "metadata_header_required", True, "require the Metadata: true header")
    flag("prometheus-port", "prometheus_port", parse_port, 9090, "metrics port (/metrics)")
    flag("operation-mode", "operation_mode", choice(*MODES), "standard", "standard or managed")
    switch("allow-network-plugin-kubenet", "allow_kubenet", False, "run on kubenet clusters")
    flag("kubelet-config", "kubelet_config", str, "/etc/default/kubelet", "kubelet config inspected for kubenet")
    switch("set-retry-after-header", "set_retry_after_header", False, "503 + Retry-After instead of 404 while waiting")
    switch("enable-conntrack-deletion", "conntrack_deletion", False, "drop conntrack entries to IMDS after install")
    flag("log-format", "log_format", choice("text", "json"), "text", "text or json")
    flag("v", "verbosity", parse_non_negative, 0, "log verbosity")
    flag("kubeconfig", "kubeconfig", str, "", "kubeconfig file (default: $KUBECONFIG, then in-cluster)")
    flag("custom-user-agent", "custom_user_agent", str, "", "appended to the Kubernetes client User-Agent")
    switch("manage-iptables", "manage_iptables", True, "install and supervise the aad-metadata chain")
    switch("fail-closed", "fail_closed", False,
           "on SIGTERM/SIGINT swap the DNAT for a reject of pod TCP to the metadata address (instead of removing it)")
    flag("node-startup-taint", "node_startup_taint", parse_taint_key, "",
         "once ready, remove this taint (key) from the Node named by --node")
    flag("iptables-backend", "iptables_backend", choice("auto", "legacy", "nft"), "auto", "auto, legacy or nft")
    switch("audit-events", "audit_events", True, "record token issuance as Events on the AzureIdentityBinding")
    switch("workload-identity", "workload_identity", False,
           "serve pods without a binding through workload identity federation of their ServiceAccount")
    flag("workload-identity-tenant-id", "workload_identity_tenant_id", str, "",
         "tenant when the ServiceAccount has no azure.workload.identity/tenant-id annotation")
    flag("workload-identity-authority-host", "workload_identity_authority_host", parse_https_url,
         "https://login.microsoftonline.com/", "Azure AD authority host for workload identity federation")
    switch("allow-cross-namespace-secrets", "allow_cross_namespace_secrets", False,
           "let an AzureIdentity's clientPassword name a Secret of another namespace (upstream behaviour)")
    flag("allowed-authority-hosts", "allowed_authority_hosts", parse_hosts, (),
         "comma-separated Azure AD authority hosts trusted besides the Azure clouds' (for adEndpoint)")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    return p


def _normalise(argv: Sequence[str]) -> list[str]:
    """pflag/klog spellings: single-dash long flags (`-v=5`, `-nmi-port=1`) become `--...`."""
    out: list[str] = []
    for arg in argv:
        if arg.startswith("-") and not arg.startswith("--") and len(arg) > 1 and arg != "-h" and not arg[1].isdigit():
            arg = "-" + arg
        out.append(arg)
    return out


def parse_args(argv: Sequence[str], *, environ: Mapping[str, str] | None = None) -> Settings:
    """Parse flags; raises UsageError with a one-line message on bad input."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    try:
        args, flag_warnings = klog_flags.extract(_normalise(argv))
    except ValueError as exc:  # FlagRefused included: both name the flag
        raise UsageError(str(exc)) from None
    ns = _build_parser().parse_args(args)
    if ns.version:
        raise VersionRequested()
    force_namespaced = ns.force_namespaced or env.get("FORCENAMESPACED") == "true"
    if ns.operation_mode == "managed" and not force_namespaced:
        raise UsageError("flag --operation-mode=managed requires --forceNamespaced (managed mode is namespaced)")
    if ns.node_startup_taint and not ns.node:
        raise UsageError("flag --node-startup-taint requires --node (the Node to remove the taint from)")
    values = {k: v for k, v in vars(ns).items() if k != "version"}
    values["flag_warnings"] = tuple(flag_warnings)
    values["force_namespaced"] = force_namespaced
    values["kubeconfig"] = ns.kubeconfig or env.get("KUBECONFIG", "")
    return Settings(**values)


def version_line() -> str:
    return f"NMI Version: {__version__} (nmi, Python drop-in for aad-pod-identity NMI)"


def load_settings(argv: Sequence[str]) -> Settings:
    """For the entry point: print one line and exit 2 on bad flags; print the version and exit 0."""
    try:
        return parse_args(argv)
    except VersionRequested:
        print(version_line())
        raise SystemExit(0)
    except UsageError as exc:
        print(f"nmi: error: {exc}", file=sys.stderr)
        raise SystemExit(2)
