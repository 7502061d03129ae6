import subprocess
import sys

import pytest

from nmi.cli import Settings, UsageError, parse_args


def test_defaults_match_upstream():
    s = parse_args([], environ={})
    assert (s.listen_address, s.port, s.metadata_ip, s.metadata_port) == ("127.0.0.1", 2579, "169.254.169.254", 80)
    assert (s.ipt_update_interval, s.probe_port, s.prometheus_port) == (60, 8080, 9090)
    assert (s.retry_attempts_for_created, s.retry_attempts_for_assigned, s.find_identity_retry_interval) == (16, 4, 5)
    assert s.scale_features and s.metadata_header_required and not s.block_instance_metadata
    assert s.operation_mode == "standard" and s.mic_namespace == "default" and s.log_format == "text"
    assert s.identity_wait_seconds == 100


@pytest.mark.parametrize("argv, field, value", [
    (["--forceNamespaced"], "force_namespaced", True),
    (["--forceNamespaced=true"], "force_namespaced", True),
    (["--metadata-header-required=false"], "metadata_header_required", False),
    (["--enableScaleFeatures=false"], "scale_features", False),
    (["-v=5"], "verbosity", 5),
    (["--v", "3"], "verbosity", 3),
    (["-nmi-port=3000"], "port", 3000),
    (["--operation-mode=MANAGED", "--forceNamespaced"], "operation_mode", "managed"),
    (["--node=$(NODE_NAME)"], "node", "$(NODE_NAME)"),
    (["--nmi-listen-address=0.0.0.0"], "listen_address", "0.0.0.0"),
])
def test_upstream_spellings_are_accepted(argv, field, value):
    assert getattr(parse_args(argv, environ={}), field) == value


def test_forcenamespaced_env_var_only_when_exactly_true():
    assert parse_args([], environ={"FORCENAMESPACED": "true"}).force_namespaced
    assert not parse_args([], environ={"FORCENAMESPACED": "True"}).force_namespaced


def test_listen_address_0000_means_dnat_to_loopback():
    assert parse_args(["--nmi-listen-address=0.0.0.0"], environ={}).dnat_target == "127.0.0.1"
    assert parse_args(["--nmi-listen-address=10.0.0.1"], environ={}).dnat_target == "10.0.0.1"


@pytest.mark.parametrize("argv, named", [
    (["--nmi-port=x"], "--nmi-port"),
    (["--nmi-port=70000"], "--nmi-port"),
    (["--ipt-update-interval-sec=0"], "--ipt-update-interval-sec"),
    (["--operation-mode=weird"], "--operation-mode"),
    (["--operation-mode=managed"], "--forceNamespaced"),
    (["--log-format=xml"], "--log-format"),
    (["--metadata-ip=not-an-ip"], "--metadata-ip"),
    (["--forceNamespaced=maybe"], "--forceNamespaced"),
    (["--enableProfile"], "--enableProfile"),
    (["--bogus-flag"], "--bogus-flag"),
])
def test_bad_flags_name_the_flag(argv, named):
    with pytest.raises(UsageError) as info:
        parse_args(argv, environ={})
    assert named in str(info.value)


def run_nmi(*args):
    return subprocess.run([sys.executable, "-m", "nmi", *args], capture_output=True, text=True, timeout=30)


def test_bad_flag_exits_2_with_one_line_and_no_traceback():
    result = run_nmi("--nmi-port=abc")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "--nmi-port" in result.stderr
    assert "Traceback" not in result.stderr


def test_version_prints_and_exits_0():
    result = run_nmi("--version")
    assert result.returncode == 0 and "NMI Version: " in result.stdout


def test_settings_is_frozen():
    with pytest.raises(Exception):
        Settings().port = 1  # type: ignore[misc]


def test_workload_identity_bridge_is_off_by_default_and_its_flags_parse():
    defaults = parse_args([])
    assert defaults.workload_identity is False and defaults.workload_identity_tenant_id == ""
    assert defaults.workload_identity_authority_host == "https://login.microsoftonline.com/"
    on = parse_args(["--workload-identity", "--workload-identity-tenant-id=t-1",
                     "-workload-identity-authority-host=https://login.microsoftonline.us"])
    assert on.workload_identity is True and on.workload_identity_tenant_id == "t-1"
    assert on.workload_identity_authority_host == "https://login.microsoftonline.us/"
    assert parse_args(["--workload-identity=false"]).workload_identity is False


@pytest.mark.parametrize("value", ["http://login.example/", "login.example", "https://", "https://h/?q=1"])
def test_workload_identity_authority_host_must_be_an_https_url(value):
    with pytest.raises(UsageError, match="--workload-identity-authority-host"):
        parse_args([f"--workload-identity-authority-host={value}"])


def test_secret_namespace_and_authority_host_rules_are_strict_by_default():
    defaults = parse_args([])
    assert defaults.allow_cross_namespace_secrets is False and defaults.allowed_authority_hosts == ()
    on = parse_args(["--allow-cross-namespace-secrets", "--allowed-authority-hosts=Login.Contoso.example, 127.0.0.1,,::1"])
    assert on.allow_cross_namespace_secrets is True
    assert on.allowed_authority_hosts == ("login.contoso.example", "127.0.0.1", "::1")


@pytest.mark.parametrize("value", ["https://login.contoso.example", "login.contoso.example:443", "a/b", "*.example",
                                   "login contoso"])
def test_allowed_authority_hosts_are_plain_host_names(value):
    with pytest.raises(UsageError, match="--allowed-authority-hosts"):
        parse_args([f"--allowed-authority-hosts={value}"])
