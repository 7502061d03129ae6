"""Client side of `tests.iptables.agent`: start it in a namespace and read its JSON lines."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
from typing import Callable

from tests.iptables.netns import REPO, Namespace


class Agent:
    """`tests.iptables.agent` running in a namespace; its JSON lines are read by a thread into a queue."""

    def __init__(self, ns: Namespace, *args: str) -> None:
        self.proc = ns.popen(sys.executable, "-u", "-m", "tests.iptables.agent", *args, cwd=REPO,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.events: "queue.Queue[dict]" = queue.Queue()
        self.seen: list[dict] = []
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        try:
            for line in self.proc.stdout:
                self.events.put(json.loads(line))
        except (OSError, ValueError):  # the stream was closed under us at teardown
            pass

    def wait_for(self, predicate: Callable[[dict], bool], timeout: float = 10) -> dict:
        try:
            while True:
                event = self.events.get(timeout=timeout)
                self.seen.append(event)
                if predicate(event):
                    return event
        except queue.Empty:
            raise AssertionError(f"agent events so far {self.seen}; stderr: {self._stderr_if_dead()}") from None

    def send(self, op: str) -> None:
        self.proc.stdin.write(op + "\n")
        self.proc.stdin.flush()

    def result(self, op: str, timeout: float = 10) -> dict:
        """The answer of a `serve` agent to `op`; an error answer fails the test."""
        answer = self.wait_for(lambda event: event.get("op") == op and not event.get("started"), timeout)
        assert "error" not in answer, answer["error"]
        return answer

    def call(self, op: str, timeout: float = 10) -> dict:
        self.send(op)
        return self.result(op, timeout)

    def _stderr_if_dead(self) -> str:
        return self.proc.stderr.read() if self.proc.poll() is not None else "(still running)"

    def stop(self, timeout: float = 10) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except OSError:
                pass


def run_agent(ns: Namespace, *args: str, timeout: float = 20) -> list[dict]:
    done = subprocess.run(ns.argv(sys.executable, "-u", "-m", "tests.iptables.agent", *args), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise AssertionError(f"agent {args} exited {done.returncode}: {done.stderr.strip()}")
    return [json.loads(line) for line in done.stdout.splitlines()]
