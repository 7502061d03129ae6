"""Runs the demo's fake API server and fake IMDS in one process until SIGTERM.

    python -m demo.fakes --pod-ips 10.244.0.10,10.244.0.11,10.244.0.12 --imds 169.254.169.254:80 \
        --kubeconfig /tmp/x/kubeconfig

Prints `ready` on stdout once both listen and the kubeconfig is written.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

from fakes import background
from fakes.apiserver import FakeApiServer
from fakes.imds import FakeImds
from . import world


async def serve(pod_ips: list[str], imds_host: str, imds_port: int, kubeconfig: Path, api_port: int) -> None:
    api = FakeApiServer(bookmark_interval=5.0)
    for obj in world.cluster_objects(world.pods_for(pod_ips)):
        api.put(obj)
    imds = FakeImds(world.vm_identities())
    url = await api.start("127.0.0.1", api_port)
    await imds.start(imds_host, imds_port)
    kubeconfig.write_text(background.kubeconfig(url))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await imds.stop()
    await api.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="demo.fakes")
    parser.add_argument("--pod-ips", required=True)
    parser.add_argument("--imds", default="127.0.0.1:0")
    parser.add_argument("--api-port", type=int, default=0)
    parser.add_argument("--kubeconfig", type=Path, required=True)
    args = parser.parse_args()
    host, _, port = args.imds.rpartition(":")
    asyncio.run(serve(args.pod_ips.split(","), host, int(port), args.kubeconfig, args.api_port))


if __name__ == "__main__":
    main()
