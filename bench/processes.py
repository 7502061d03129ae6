"""Processes under test and the load generator's process, with what /proc tells about them.

Every server is a subprocess of the benchmark, pinned to one CPU (the load generator to another, on a machine
with two), and is stopped by `ServerProcess.stop` whatever happened: callers use it as a context manager.
"""

from __future__ import annotations

import compileall
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

from fakes.ports import unused_port

from .loadgen import LoadResult, token_path

REPO_ROOT = Path(__file__).resolve().parent.parent
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def compile_bytecode(tree: Path = REPO_ROOT) -> None:
    """Compiles the bytecode of nmi, iptables and the bench launcher in `tree`, as the image does at install time
    (Dockerfile). Where PYTHONDONTWRITEBYTECODE is set (as on the build machine) nothing else writes it, and every
    nmi start would compile its ~100 modules from source first (~0.1 s), which no deployed nmi does."""
    for package in ("nmi", "iptables", "bench"):
        if (tree / package).is_dir():
            compileall.compile_dir(tree / package, quiet=1)


def print_json(result: object) -> None:
    """A bench entry point's result: one JSON object on stdout."""
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")


def free_port() -> int:
    return unused_port()


def cpu_layout() -> tuple[int | None, int | None]:
    """(server CPU, client CPU): two different CPUs when this process may use two, else no pinning."""
    cpus = sorted(os.sched_getaffinity(0))
    return (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)


def http_get(port: int, path: str, *, source: str = "127.0.0.1", headers: dict[str, str] | None = None,
             timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(source, 0))
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _pin(pid: int, cpu: int | None) -> None:
    # Set right after Popen returns (the child has just exec'd and has one thread); threads it starts
    # later inherit the mask. preexec_fn would be exact but is unsafe with the fakes' thread running here.
    if cpu is not None:
        try:
            os.sched_setaffinity(pid, {cpu})
        except ProcessLookupError:
            pass


def token_answer(port: int, *, source: str = "127.0.0.1", timeout: float = 30.0) -> tuple[int, bytes]:
    """(status, body) of one token request for the benchmark's usual resource, sent from `source`."""
    return http_get(port, token_path(0, distinct_resources=False), source=source, headers={"Metadata": "true"},
                    timeout=timeout)


class PortTaken(RuntimeError):
    """The server could not bind: a port picked as free was taken meanwhile (by anything on the machine)."""


class ServerProcess:
    """A server subprocess; `start` returns seconds from spawn to the first 200 on its readiness path.
    `service_port` is where the load goes (nmi answers probes on another port than tokens)."""

    def __init__(self, name: str, argv: Sequence[str], *, log_path: Path, ready_port: int,
                 service_port: int | None = None, ready_path: str = "/readyz", cpu: int | None = None) -> None:
        self.name, self.argv, self.log_path = name, list(argv), log_path
        self.service_port = ready_port if service_port is None else service_port
        self.ready_port, self.ready_path, self.cpu = ready_port, ready_path, cpu
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, *, timeout: float = 60.0) -> float:
        self._log = open(self.log_path, "wb")
        started = time.perf_counter()
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        _pin(self.proc.pid, self.cpu)
        deadline = started + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_tail()
                kind = PortTaken if "address already in use" in tail.lower() else RuntimeError
                raise kind(f"{self.name} exited with {self.proc.returncode}:\n{tail}")
            try:
                if http_get(self.ready_port, self.ready_path, timeout=1.0)[0] == 200:
                    return time.perf_counter() - started
            except (OSError, http.client.HTTPException):
                pass  # not listening yet; HTTPException: a TCP self-connect to the unbound port echoed our request
            time.sleep(0.01)
        raise RuntimeError(f"{self.name} not ready after {timeout} s:\n{self.log_tail()}")

    def _status_kib(self, field: str) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise RuntimeError(f"{field} missing from /proc/{self.pid}/status")

    def rss_mib(self) -> float:
        return self._status_kib("VmRSS") / 1024

    def peak_rss_mib(self) -> float:
        return self._status_kib("VmHWM") / 1024

    def cpu_seconds(self) -> float:
        """User + system CPU of the whole process (all threads) so far."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()  # the command name may contain spaces
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, *, grace: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace` seconds; returns the exit code (None if never started)."""
        if self.proc is None:
            return None
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait()
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def running(make: Callable[[], ServerProcess], *, attempts: int = 3) -> Iterator[tuple[ServerProcess, float]]:
    """Starts `make()` (fresh ports each attempt, if a port was stolen) and yields (process, start-up seconds);
    the process is stopped on the way out, whatever happened."""
    for attempt in range(attempts):
        process = make()
        try:
            seconds = process.start()
        except PortTaken:
            process.stop()
            if attempt + 1 == attempts:
                raise
            continue
        except BaseException:
            process.stop()
            raise
        try:
            yield process, seconds
        finally:
            process.stop()
        return


def wait_indexed(server: "ServerProcess", source: str, *, timeout: float = 60.0) -> float:
    """Seconds until a pod calling from `source` gets its token, i.e. nmi's watch cache holds the pod."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        try:
            if token_answer(server.service_port, source=source, timeout=10.0)[0] == 200:
                return time.perf_counter() - started
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.02)
    raise RuntimeError(f"nmi did not index the pod at {source} within {timeout} s:\n{server.log_tail()}")


def run_load(port: int, count: int, *, concurrency: int, cpu: int | None, metadata: bool = True,
             distinct_resources: bool = False, first_index: int = 0, timeout: float = 60.0,
             resource: str = "", source: str = "") -> LoadResult:
    """Runs the load generator in its own process and returns what it measured; `timeout` bounds the run
    (unanswered requests then count as failed), and the process is killed if it overstays that."""
    argv = [sys.executable, "-m", "bench.loadgen", f"--port={port}", f"--count={count}",
            f"--concurrency={concurrency}", f"--first-index={first_index}", f"--timeout={timeout}"]
    if not metadata:
        argv.append("--no-metadata")
    if distinct_resources:
        argv.append("--distinct-resources")
    if resource:
        argv.append(f"--resource={resource}")
    if source:
        argv.append(f"--source={source}")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO_ROOT)
    _pin(proc.pid, cpu)
    try:
        out, err = proc.communicate(timeout=timeout + 15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode}): {err.decode(errors='replace')[-2000:]}")
    return LoadResult(**json.loads(out))
