"""`nmi doctor`: from a pod's network namespace (or the node's), where does the metadata address lead?

    nmi doctor [--metadata-ip IP] [--metadata-port PORT] [--timeout SECONDS] [-o text|json]

It sends the request azure-identity sends first (`GET /metadata/identity/oauth2/token` without the `Metadata`
header and without a resource), which real IMDS and nmi both refuse with a 400 and never answer with a token.
nmi marks every answer of its own with `Server: nmi/<version>`, so the answer tells who is there:

    nmi      exit 0  the redirect works: pods here get tokens from nmi
    imds     exit 1  something else answered (the real IMDS): FAIL-OPEN, pods here can use the node's identities
    nothing  exit 3  refused, reset, unreachable or timed out: fail-closed (nmi down, or its reject in place)

Exit 2 is bad usage. Standard library only, so it starts fast in a debug container.
"""

from __future__ import annotations

import argparse
import errno
import http.client
import json
import socket
import sys
import time
from dataclasses import asdict, dataclass
from typing import Sequence

PROBE_PATH = "/metadata/identity/oauth2/token?api-version=2018-02-01"
NMI_SERVER_PREFIX = "nmi/"
EXIT_CODES = {"nmi": 0, "imds": 1, "nothing": 3}


@dataclass(frozen=True)
class Diagnosis:
    target: str
    outcome: str  # nmi | imds | nothing
    detail: str
    status: int | None = None
    server: str = ""
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.outcome]


def probe(metadata_ip: str, metadata_port: int, *, timeout: float = 3.0) -> Diagnosis:
    target = f"{metadata_ip}:{metadata_port}"
    started = time.monotonic()
    connection = http.client.HTTPConnection(metadata_ip, metadata_port, timeout=timeout)
    try:
        connection.request("GET", PROBE_PATH, headers={"User-Agent": "nmi-doctor"})
        response = connection.getresponse()
        response.read(64 * 1024)
    except (socket.timeout, TimeoutError):
        return Diagnosis(target, "nothing", f"no answer within {timeout:g}s (dropped)",
                         seconds=time.monotonic() - started)
    except ConnectionRefusedError:
        return Diagnosis(target, "nothing", "connection refused (TCP reset)", seconds=time.monotonic() - started)
    except (http.client.HTTPException, ConnectionResetError, BrokenPipeError) as exc:
        # The connection was accepted by something that is not nmi (nmi always answers in HTTP).
        return Diagnosis(target, "imds", f"connection accepted but no HTTP answer ({type(exc).__name__})",
                         seconds=time.monotonic() - started)
    except OSError as exc:
        reason = errno.errorcode.get(exc.errno or 0, "") or type(exc).__name__
        return Diagnosis(target, "nothing", f"cannot connect: {exc.strerror or exc} ({reason})",
                         seconds=time.monotonic() - started)
    finally:
        connection.close()
    server = (response.getheader("Server") or "")[:200]
    seconds = time.monotonic() - started
    if server.startswith(NMI_SERVER_PREFIX):
        return Diagnosis(target, "nmi", f"answered by {server}", status=response.status, server=server,
                         seconds=seconds)
    return Diagnosis(target, "imds", f"answered by {server or 'a server without a Server header'}, not by nmi",
                     status=response.status, server=server, seconds=seconds)


def render_text(diagnosis: Diagnosis) -> str:
    if diagnosis.outcome == "nmi":
        return (f"{diagnosis.target} reaches nmi ({diagnosis.detail}, HTTP {diagnosis.status}).\n"
                "Pods in this network namespace get their tokens from nmi.")
    if diagnosis.outcome == "imds":
        return (f"{diagnosis.target} reaches the metadata service directly: {diagnosis.detail}.\n"
                "FAIL-OPEN: pods in this network namespace can get tokens for every identity of the node.\n"
                "(Expected only in the node's own network namespace: host-network traffic is never redirected.)")
    return (f"{diagnosis.target} reaches nothing: {diagnosis.detail}.\n"
            "Fail-closed: nmi is not serving here (stopped, restarting with --fail-closed, or not installed yet);\n"
            "pods in this network namespace get no tokens, and no other identity either.")


def main(argv: Sequence[str]) -> int:
    from .cli import parse_ip, parse_port

    parser = argparse.ArgumentParser(prog="nmi doctor",
                                     description="Say whether the metadata address reaches nmi, IMDS, or nothing.")
    parser.add_argument("--metadata-ip", type=parse_ip, default="169.254.169.254")
    parser.add_argument("--metadata-port", type=parse_port, default=80)
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for an answer (default 3)")
    parser.add_argument("-o", "--output", choices=("text", "json"), default="text")
    args = parser.parse_args(list(argv))
    if not 0 < args.timeout <= 60:
        parser.error("--timeout must be between 0 and 60 seconds")
    diagnosis = probe(args.metadata_ip, args.metadata_port, timeout=args.timeout)
    if args.output == "json":
        print(json.dumps({**asdict(diagnosis), "seconds": round(diagnosis.seconds, 3)}))
    else:
        print(render_text(diagnosis))
    return diagnosis.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
