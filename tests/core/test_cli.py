import dataclasses
import json
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
    with pytest.raises(dataclasses.FrozenInstanceError):
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
# Upstream flags whose value changes nothing in nmi: a manifest carried over from aad-pod-identity must keep
# running (one warning line each), not crash-loop on exit 2.
@pytest.mark.parametrize("argv, shown", [
    (["--enableProfile=false"], "--enableProfile=false"),
    (["--alsologtostderr"], "--alsologtostderr=true"),
    (["-alsologtostderr=false"], "--alsologtostderr=false"),
    (["--logtostderr"], "--logtostderr=true"),
    (["--logtostderr=true"], "--logtostderr=true"),
    (["--stderrthreshold=WARNING"], "--stderrthreshold=WARNING"),
    (["--stderrthreshold", "2"], "--stderrthreshold=2"),
    (["--log_file_max_size=1800"], "--log_file_max_size=1800"),
    (["--skip_headers"], "--skip_headers=true"),
    (["--skip_log_headers=true"], "--skip_log_headers=true"),
    (["--add_dir_header=false"], "--add_dir_header=false"),
    (["--one_output"], "--one_output=true"),
    (["--log_dir="], "--log_dir="),
    (["--log_file="], "--log_file="),
    (["--vmodule="], "--vmodule="),
    (["--log_backtrace_at=:0"], "--log_backtrace_at=:0"),
])
def test_harmless_upstream_flags_are_accepted_with_one_warning_each(argv, shown):
    settings = parse_args(argv + ["--nmi-port=3000"], environ={})
    assert settings.port == 3000  # the rest of the command line still parses
    (warning,) = settings.flag_warnings
    assert warning.startswith(f"flag {shown} has no effect: ")


def test_chart_style_command_line_with_several_harmless_flags_warns_once_per_flag():
    settings = parse_args(["--node=n1", "--logtostderr=true", "--alsologtostderr", "--enableProfile=false",
                           "-v=5", "--stderrthreshold=INFO"], environ={})
    assert (settings.node, settings.verbosity) == ("n1", 5)
    assert [w.split()[1] for w in settings.flag_warnings] == [
        "--logtostderr=true", "--alsologtostderr=true", "--enableProfile=false", "--stderrthreshold=INFO"]
    assert parse_args(["--node=n1"], environ={}).flag_warnings == ()


@pytest.mark.parametrize("argv, named", [
    (["--enableProfile"], "--enableProfile=true"),
    (["--enableProfile=true"], "--enableProfile=true"),
    (["--log_dir=/var/log/nmi"], "--log_dir=/var/log/nmi"),
    (["--log_dir", "/var/log/nmi"], "--log_dir=/var/log/nmi"),
    (["-log_file=/x"], "--log_file=/x"),
    (["--logtostderr=false"], "--logtostderr=false"),
    (["--vmodule=server=5"], "--vmodule=server=5"),
    (["--log_backtrace_at=server.go:80"], "--log_backtrace_at=server.go:80"),
])
def test_values_that_need_a_missing_feature_are_refused(argv, named):
    with pytest.raises(UsageError, match="is not supported") as info:
        parse_args(argv, environ={})
    assert named in str(info.value)


@pytest.mark.parametrize("argv, named", [
    (["--alsologtostderr=maybe"], "--alsologtostderr"),
    (["--stderrthreshold=loud"], "--stderrthreshold"),
    (["--log_file_max_size=-1"], "--log_file_max_size"),
    (["--log_dir"], "--log_dir"),
])
def test_malformed_values_of_compatibility_flags_are_refused_naming_the_flag(argv, named):
    with pytest.raises(UsageError) as info:
        parse_args(argv, environ={})
    assert named in str(info.value) and "no effect" not in str(info.value)


def test_the_running_daemon_logs_each_flag_warning_once_in_the_chosen_format():
    # Start-up fails right after logging is set up (no kubelet config here): the warnings come first, as JSON.
    result = run_nmi("--alsologtostderr", "--enableProfile=false", "--log-format=json", "--manage-iptables=false",
                     "--kubelet-config=/nonexistent/kubelet", "--node=n1")
    assert result.returncode == 1
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    warnings = [line["msg"] for line in lines if "has no effect" in line["msg"]]
    assert warnings == ["flag --alsologtostderr=true has no effect: nmi logs only to stderr and writes no log files",
                        "flag --enableProfile=false has no effect: nmi has no profiling endpoint"]


def test_refused_compatibility_flag_exits_2_with_one_line():
    result = run_nmi("--log_dir=/var/log/nmi")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "--log_dir=/var/log/nmi is not supported" in result.stderr


def test_help_lists_the_accepted_compatibility_flags():
    result = run_nmi("--help")
    assert result.returncode == 0 and "--alsologtostderr" in result.stdout and "--enableProfile" in result.stdout


def test_fail_closed_is_off_by_default_for_drop_in_compatibility():
    assert parse_args([]).fail_closed is False
    assert parse_args(["--fail-closed"]).fail_closed is True
    assert parse_args(["--fail-closed=true"]).fail_closed is True
    assert parse_args(["--fail-closed=false"]).fail_closed is False


def test_node_startup_taint_takes_a_taint_key_and_needs_the_node():
    assert parse_args([]).node_startup_taint == ""
    settings = parse_args(["--node=n1", "--node-startup-taint=aadpodidentity.k8s.io/nmi-not-ready"])
    assert settings.node_startup_taint == "aadpodidentity.k8s.io/nmi-not-ready"
    with pytest.raises(UsageError, match="--node-startup-taint requires --node"):
        parse_args(["--node-startup-taint=nmi-not-ready"])


@pytest.mark.parametrize("key", ["a b", "/x", "x/", "-x", "Example.com/x", "a" * 64, "x/y/z"])
def test_node_startup_taint_refuses_what_is_not_a_taint_key(key):
    with pytest.raises(UsageError, match="--node-startup-taint"):
        parse_args(["--node=n1", f"--node-startup-taint={key}"])
