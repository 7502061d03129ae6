"""Black-box harness: the real nmi process on loopback, against fakes of the API server and IMDS in a background
thread of the test process (fakes.background.BackgroundFakes, so tests can change the cluster while nmi runs),
and plain HTTP callers that pick their source address in 127.0.0.0/8 to play different pods."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fakes.background import BackgroundFakes, kubeconfig
from fakes.ports import unused_ports


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: str

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class NmiProcess:
    def __init__(self, tmp: Path, fakes: BackgroundFakes, *, node: str, extra: list[str],
                 env: dict[str, str] | None = None) -> None:
        self.env = env
        self.port, self.probe_port, self.metrics_port = unused_ports(3)
        config = tmp / "kubeconfig"
        config.write_text(kubeconfig(fakes.api.url))
        kubelet = tmp / "kubelet-defaults"
        kubelet.write_text("KUBELET_FLAGS=--network-plugin=cni\n")
        self.log_path = tmp / "nmi.log"
        self.argv = [sys.executable, "-m", "nmi", f"--node={node}", f"--nmi-port={self.port}",
                     f"--http-probe-port={self.probe_port}", f"--prometheus-port={self.metrics_port}",
                     "--metadata-ip=127.0.0.1", f"--metadata-port={fakes.imds.port}", f"--kubeconfig={config}",
                     f"--kubelet-config={kubelet}", "--manage-iptables=false", *extra]
        self.proc: subprocess.Popen | None = None

    def spawn(self) -> None:
        """Starts nmi without waiting for it to be ready: for tests of what callers see before that."""
        self._log = open(self.log_path, "w")
        env = {**os.environ, **self.env} if self.env else None
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def start(self) -> None:
        self.spawn()
        assert self.proc is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"nmi exited: {self.log_path.read_text()}"
            try:
                if self.get("/readyz", port=self.probe_port).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError("nmi did not become ready:\n" + self.log_path.read_text())

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text()

    def get(self, path: str, *, source: str = "127.0.0.1", headers: dict[str, str] | None = None,
            method: str = "GET", port: int | None = None, timeout: float = 30) -> Answer:
        conn = http.client.HTTPConnection("127.0.0.1", port or self.port, timeout=timeout, source_address=(source, 0))
        try:
            conn.request(method, path, headers=headers or {})
            response = conn.getresponse()
            return Answer(response.status, {k: v for k, v in response.getheaders()}, response.read().decode())
        finally:
            conn.close()

    def token(self, *, source: str = "127.0.0.1", metadata: bool = True, **query: str) -> Answer:
        params = {"api-version": "2018-02-01", "resource": "https://management.azure.com/", **query}
        from urllib.parse import urlencode
        return self.get("/metadata/identity/oauth2/token?" + urlencode(params), source=source,
                        headers={"Metadata": "true"} if metadata else {})
