"""The real nmi process under faults: started before the cluster is reachable if need be, probed, and measured
from /proc (fds, threads, RSS) so leaks per failed call show up as numbers, not guesses."""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from fakes.background import BackgroundFakes, kubeconfig
from fakes.ports import unused_port

from tests.e2e.harness import Answer, NmiProcess

T = TypeVar("T")
# Answers nmi may give a pod besides 200 (SPEC §2), and which of them must carry Retry-After.
DOCUMENTED_ERRORS = {400, 403, 404, 429, 500, 503}
NEEDS_RETRY_AFTER = {429, 503}
REPORT: list[str] = []  # lines for the terminal summary (conftest.py): the chaos test's counts by status
RECOVERY = 60.0  # informer backoff is capped at 30 s (+ jitter down), plus a relist on a loaded machine: a bound
# on recovering by itself


def eventually(predicate: Callable[[], T], *, timeout: float, interval: float = 0.05, what: str = "") -> T:
    """Poll until `predicate()` is truthy (returned) or `timeout` passes (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout}s: {what or predicate}")
        time.sleep(interval)


@dataclass(frozen=True)
class ProcStats:
    fds: int
    threads: int
    rss_kib: int
    sockets: int


def proc_stats(pid: int) -> ProcStats:
    fd_dir = Path(f"/proc/{pid}/fd")
    targets = []
    for entry in os.listdir(fd_dir):
        try:
            targets.append(os.readlink(fd_dir / entry))
        except OSError:  # closed while we looked
            pass
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return ProcStats(fds=len(targets), threads=len(os.listdir(f"/proc/{pid}/task")), rss_kib=rss,
                     sockets=sum(1 for t in targets if t.startswith("socket:")))


def token_claims(answer: Answer) -> dict:
    token = answer.json["access_token"]
    return json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))


def assert_documented(answer: Answer) -> None:
    """Every non-200 answer is IMDS JSON with `error` and `error_description`, Retry-After where SPEC says."""
    assert answer.status in DOCUMENTED_ERRORS, (answer.status, answer.body)
    assert answer.headers.get("Content-Type", "").startswith("application/json"), answer.headers
    body = answer.json
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], answer.body
    assert isinstance(body.get("error_description"), str), answer.body
    if answer.status in NEEDS_RETRY_AFTER:
        assert answer.headers.get("Retry-After", "").isdigit(), (answer.status, answer.headers)


class FaultyNmi(NmiProcess):
    """NmiProcess that may start before its API server exists, with probes and /proc measurements."""

    def __init__(self, tmp: Path, fakes: BackgroundFakes, *, node: str, extra: list[str],
                 api_port: int | None = None, env: dict[str, str] | None = None) -> None:
        super().__init__(tmp, fakes, node=node, extra=extra, env=env)
        if api_port is not None:  # the API server will listen here later
            (tmp / "kubeconfig").write_text(kubeconfig(f"http://127.0.0.1:{api_port}"))

    def start_unready(self, timeout: float = 30) -> None:
        """Start and wait only until the probe port answers, whatever it says."""
        import subprocess

        self._log = open(self.log_path, "w")
        env = {**os.environ, **self.env} if self.env else None
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=env)

        def probe_answers() -> bool:
            assert self.proc.poll() is None, f"nmi exited: {self.log_path.read_text()}"
            try:
                self.readyz()
                return True
            except OSError:
                return False

        eventually(probe_answers, timeout=timeout, interval=0.1, what="probe port answers")

    def readyz(self) -> Answer:
        return self.get("/readyz", port=self.probe_port, timeout=5)

    def wait_ready(self, timeout: float = 30) -> None:
        eventually(lambda: self.readyz().status == 200, timeout=timeout, interval=0.1, what="nmi ready")

    def metrics(self) -> str:
        return self.get("/metrics", port=self.metrics_port, timeout=5).body

    def stats(self) -> ProcStats:
        assert self.proc is not None
        return proc_stats(self.proc.pid)


def free_api_port() -> int:
    return unused_port()


WATCHED = ("pods", "azureidentities", "azureidentitybindings", "azurepodidentityexceptions")


def settle(nmi, fakes) -> None:
    """Wait (bounded) until every informer watches again and nmi is ready: a fault of one test must not
    bleed into the next one's timings."""
    eventually(lambda: all(fakes.call(lambda: fakes.api.open_watches(r)) >= 1 for r in WATCHED),
               timeout=RECOVERY, what="every informer watching")
    nmi.wait_ready(timeout=RECOVERY)
