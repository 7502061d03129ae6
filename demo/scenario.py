"""The demo's steps: each runs a real client as a given pod and checks what it got."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import world

PY = sys.executable
VAULT = "https://vault.azure.net"
ARM = "https://management.azure.com/"

AZURE_IDENTITY = """
import base64, json
from azure.identity import ManagedIdentityCredential
token = ManagedIdentityCredential().get_token("https://vault.azure.net/.default")
claims = json.loads(base64.urlsafe_b64decode(token.token.split(".")[1] + "=="))
print(json.dumps({"oid": claims.get("oid"), "expires_in": int(token.expires_on - __import__("time").time())}))
"""

MSRESTAZURE = """
import base64, json
from msrestazure.azure_active_directory import MSIAuthentication
token = MSIAuthentication(resource="https://management.azure.com/").token["access_token"]
claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
print(json.dumps({"oid": claims.get("oid")}))
"""

Runner = Callable[..., subprocess.CompletedProcess]


def claims_of(access_token: str) -> dict:
    import base64

    return json.loads(base64.urlsafe_b64decode(access_token.split(".")[1] + "=="))


def oid_of(identity_name: str) -> str:
    return next(i.object_id for i in world.IDENTITIES if i.name == identity_name)


def client_id_of(identity_name: str) -> str:
    return next(i.client_id for i in world.IDENTITIES if i.name == identity_name)


@dataclass
class Scenario:
    node_run: Runner
    pod_runs: dict[str, Runner]
    imds_url: str
    probe_url: str
    metrics_url: str
    env: dict[str, str]
    over_dnat: bool  # pods in namespaces reach 169.254.169.254 through the chain (else: loopback, no chain)
    log_path: Path
    failures: list[str] = field(default_factory=list)

    def curl(self, runner: Runner, url: str, *headers: str) -> tuple[int, str]:
        argv = ["curl", "-sS", "--noproxy", "*", "--max-time", "10", "-w", "\n%{http_code}"]
        for header in headers:
            argv += ["-H", header]
        done = self.run(runner, *argv, url, timeout=15)
        body, _, status = done.stdout.rpartition("\n")
        return int(status or 0), body

    @staticmethod
    def run(runner: Runner, *argv: str, timeout: float) -> subprocess.CompletedProcess:
        try:
            return runner(*argv, check=False, timeout=timeout)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(argv, 124, "", f"timed out after {timeout}s")

    def check(self, title: str, ok: bool, detail: str) -> None:
        print(f"  {'PASS' if ok else 'FAIL'}  {title}\n        {detail}")
        if not ok:
            self.failures.append(title)

    def token_url(self, **query: str) -> str:
        params = "&".join(f"{k}={v}" for k, v in {"api-version": "2018-02-01", "resource": ARM, **query}.items())
        return f"{self.imds_url}/metadata/identity/oauth2/token?{params}"

    def wait_ready(self, nmi: subprocess.Popen, timeout: float = 60) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if nmi.poll() is not None:
                return False
            status, _ = self.curl(self.node_run, f"{self.probe_url}/readyz")
            if status == 200:
                return True
            time.sleep(0.2)
        return False

    def play(self, nmi: subprocess.Popen) -> bool:
        os.environ.update(self.env)
        os.environ["NO_PROXY"] = "*"
        started = time.monotonic()
        if not self.wait_ready(nmi):
            print("nmi did not become ready; its log:\n" + self.log_path.read_text()[-4000:])
            return False
        ready_means = "caches synced, chain installed" if self.over_dnat else "caches synced (no chain on loopback)"
        print(f"nmi is ready ({time.monotonic() - started:.1f}s): {ready_means}\n")
        self.show_chain()
        self.steps()
        self.stop(nmi)
        print(f"\n{'all steps passed' if not self.failures else 'FAILED: ' + ', '.join(self.failures)}"
              f" (nmi log: {len(self.log_path.read_text().splitlines())} lines; last lines below)")
        print("\n".join("  | " + line for line in self.log_path.read_text().splitlines()[-(40 if self.failures else 6):]))
        return not self.failures

    def show_chain(self) -> None:
        for tool in ("iptables-legacy-save", "iptables-nft-save"):
            done = self.node_run(tool, "-t", "nat", check=False)
            lines = [line for line in done.stdout.splitlines() if "aad-metadata" in line]
            if lines:
                print(f"{tool} -t nat  (in the node namespace):")
                print("\n".join("  " + line for line in lines) + "\n")

    def steps(self) -> None:
        frontend, backend, unbound = (self.pod_runs[name] for name in ("frontend", "backend", "unbound"))
        print("Pods calling IMDS:")
        status, body = self.curl(frontend, self.token_url(), "Metadata: true")
        token = json.loads(body) if status == 200 else {}
        self.check("curl in pod frontend gets a token for frontend-id", status == 200 and
                   claims_of(token["access_token"]).get("oid") == oid_of("frontend-id"),
                   f"HTTP {status}, client_id={token.get('client_id')}, expires_in={token.get('expires_in')},"
                   f" keys={sorted(token)}")
        done = self.run(frontend, PY, "-c", AZURE_IDENTITY, timeout=60)
        got = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 and done.stdout.strip() else {}
        self.check("azure-identity ManagedIdentityCredential in pod frontend", got.get("oid") == oid_of("frontend-id"),
                   f"oid={got.get('oid')}, expires_in={got.get('expires_in')}" if got else done.stderr.strip()[-300:])
        if self.over_dnat:  # msrestazure cannot be pointed anywhere but 169.254.169.254
            done = self.run(backend, PY, "-c", MSRESTAZURE, timeout=60)
            got = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 and done.stdout.strip() else {}
            self.check("msrestazure MSIAuthentication (hard-wired to 169.254.169.254) in pod backend",
                       got.get("oid") == oid_of("backend-id"),
                       f"oid={got.get('oid')}" if got else done.stderr.strip()[-300:])
        status, body = self.curl(backend, self.token_url(client_id=client_id_of("backend-id")), "Metadata: true")
        self.check("pod backend asking for its own client_id", status == 200, f"HTTP {status}")
        status, body = self.curl(frontend, self.token_url(client_id=client_id_of("backend-id")), "Metadata: true")
        self.check("pod frontend asking for backend's identity is refused", status == 400 and "Identity not found" in body,
                   f"HTTP {status} {body}")
        status, body = self.curl(unbound, self.token_url(), "Metadata: true")
        self.check("pod without a binding fails fast", status == 400 and "Identity not found" in body,
                   f"HTTP {status} {body}")
        status, body = self.curl(frontend, self.token_url())
        self.check("request without the Metadata header", status == 400 and "metadata header" in body.lower(),
                   f"HTTP {status} {body}")
        status, body = self.curl(self.node_run, f"{self.metrics_url}/metrics")
        counts = [line for line in body.splitlines() if line.startswith("aadpodidentity_nmi_operations_duration_seconds_count")]
        self.check("Prometheus metrics with upstream names", status == 200 and bool(counts),
                   (counts[0] if counts else f"HTTP {status}")[:160])

    def stop(self, nmi: subprocess.Popen) -> None:
        nmi.send_signal(signal.SIGTERM)
        try:
            code = nmi.wait(20)
        except subprocess.TimeoutExpired:
            nmi.kill()
            code = nmi.wait()
        leftover = []
        for tool in ("iptables-legacy-save", "iptables-nft-save"):
            done = self.node_run(tool, "-t", "nat", check=False)
            leftover += [line for line in done.stdout.splitlines() if "aad-metadata" in line]
        self.check("SIGTERM: nmi exits 0" + (" and leaves no chain behind" if self.over_dnat else ""),
                   code == 0 and not leftover,
                   f"exit code {code}, leftover rules: {leftover or 'none'}")
