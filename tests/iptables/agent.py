"""Runs iptables package code inside a network namespace for the tests (Python 3.11 has no os.setns).

    ip netns exec NS python -u -m tests.iptables.agent <command> [options]

Every command prints JSON lines on stdout: results, and for `supervise` one event per state change or repair.
`serve` opens the backend once (importing python-iptables costs ~0.3 s) and then runs the operations named on
its stdin lines (read, read-filter, converge, fail-closed, remove), answering each with {"op": ..., "started": true} and then the result
or {"op": ..., "error": ...}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

from iptables import (ChainSpec, NftBackend, XtablesLock, check_route_localnet, delete_conntrack, detect_mode,
                      open_backend)
from iptables.supervisor import supervise


def emit(**event: object) -> None:
    print(json.dumps(event), flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["serve", "supervise", "detect", "echo-server",
                                            "route-localnet", "conntrack"])
    parser.add_argument("--backend", default="legacy")
    parser.add_argument("--metadata-ip", default="169.254.169.254")
    parser.add_argument("--metadata-port", type=int, default=80)
    parser.add_argument("--target-ip", default="127.0.0.1")
    parser.add_argument("--target-port", type=int, default=2579)
    parser.add_argument("--lock", default="/run/xtables.lock")
    parser.add_argument("--lock-timeout", type=float, default=5.0)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=2579)
    parser.add_argument("--interfaces", default=None)
    parser.add_argument("--name", default="echo", help="echo-server: how the server names itself in answers")
    parser.add_argument("--restore-command", default=None, help="nft backend: restore command (space-separated)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    spec = ChainSpec(args.metadata_ip, args.metadata_port, args.target_ip, args.target_port)
    if args.command == "detect":
        choice = detect_mode()
        emit(mode=choice.mode, reason=choice.reason)
    elif args.command == "echo-server":
        asyncio.run(echo_server(args.host, args.port, args.name))
    elif args.command == "route-localnet":
        interfaces = args.interfaces.split(",") if args.interfaces else None
        emit(problem=check_route_localnet(args.target_ip, interfaces))
    elif args.command == "conntrack":
        emit(deleted=delete_conntrack(args.metadata_ip, args.metadata_port))
    else:
        lock = XtablesLock(args.lock, timeout=args.lock_timeout)
        if args.restore_command:
            backend = NftBackend(lock=lock, restore_command=tuple(args.restore_command.split()))
        else:
            backend = open_backend(args.backend, lock=lock)
        if args.command == "serve":
            serve(backend, spec)
        else:
            asyncio.run(run_supervisor(backend, spec, args.interval))
    return 0


def serve(backend, spec: ChainSpec) -> None:
    operations = {
        "read": lambda: {"chains": {name: list(rules) for name, rules in backend.read(spec).nat.chains.items()}},
        "read-filter": lambda: {"chains": {name: list(rules)
                                           for name, rules in backend.read(spec).filter.chains.items()}},
        "converge": lambda: {"reasons": list(backend.converge(spec).reasons)},
        "fail-closed": lambda: {"reasons": list(backend.fail_closed(spec).reasons)},
        "remove": lambda: {"reasons": list(backend.remove().reasons)},
    }
    emit(event="ready")
    for line in sys.stdin:
        op = line.strip()
        emit(op=op, started=True)
        try:
            emit(op=op, **operations[op]())
        except Exception as exc:  # reported to the test, which decides
            emit(op=op, error=f"{type(exc).__name__}: {exc}")


async def run_supervisor(backend, spec: ChainSpec, interval: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await supervise(backend, spec, interval=interval, stop=stop, retry_initial=0.05,
                    on_state=lambda ok: emit(event="state", ok=ok),
                    on_repair=lambda reason: emit(event="repair", reason=reason))
    emit(event="stopped")


async def echo_server(host: str, port: int, name: str) -> None:
    """Answers every request with the TCP peer and what was asked: where the DNATed request came from."""
    from aiohttp import web

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"remote": request.remote, "path": request.path, "query": dict(request.query),
                                  "host": request.host, "server": name})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    emit(event="listening")
    await asyncio.Event().wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
