"""`nmi explain`: asks the running daemon on this node (its probe port on 127.0.0.1) which identity a pod would
get and why, and prints the answer as text or JSON. Standard library only: it must start fast and work from a
node shell.

Exit status: 0 the pod would get a token, 1 it would not, 2 bad usage, 3 the daemon could not be asked.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
from typing import Any, Sequence
from urllib.parse import urlencode


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nmi explain", description="Why a pod on this node gets (or not) an identity, "
                                "from the running nmi's caches; no token is fetched.")
    p.add_argument("--namespace", "-n", required=True, help="the pod's namespace")
    p.add_argument("--pod", required=True, help="the pod's name")
    p.add_argument("--resource", default="", help="only show cached tokens for this resource")
    selector = p.add_mutually_exclusive_group()
    selector.add_argument("--client-id", default="", help="as the client_id query parameter")
    selector.add_argument("--msi-res-id", default="", help="as the msi_res_id query parameter")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.add_argument("--http-probe-port", type=int, default=8080, help="the daemon's --http-probe-port (8080)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the daemon")
    return p


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)  # exits 2 on bad usage
    query = {"namespace": args.namespace, "pod": args.pod}
    query.update({key: value for key, value in (("resource", args.resource), ("client_id", args.client_id),
                                                 ("msi_res_id", args.msi_res_id)) if value})
    try:
        status, body = _get(args.http_probe_port, "/explain?" + urlencode(query), timeout=args.timeout)
    except OSError as exc:
        print(f"nmi explain: cannot reach nmi on 127.0.0.1:{args.http_probe_port}: {exc}", file=sys.stderr)
        return 3
    try:
        report = json.loads(body)
    except ValueError:
        report = None
    if status != 200 or not isinstance(report, dict):
        description = report.get("error_description", "") if isinstance(report, dict) else body[:200]
        print(f"nmi explain: nmi answered {status}: {description}", file=sys.stderr)
        return 3
    print(json.dumps(report, indent=2, sort_keys=True) if args.output == "json" else render_text(report))
    return 0 if report.get("status") == 200 else 1


def _get(port: int, path: str, *, timeout: float) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read(1 << 20).decode("utf-8", "replace")
    finally:
        conn.close()


def render_text(report: dict[str, Any]) -> str:
    chain = report.get("chain", {})
    lines = [f"pod:       {report.get('pod')}  ({report.get('mode')} mode)"]
    info = report.get("pod_info")
    if info:
        extra = ", host network" if info.get("host_network") else ""
        lines.append(f"address:   {info.get('ip') or '-'} ({info.get('phase')}{extra}); live pods with it: "
                     + (", ".join(info.get("ip_owners") or []) or "none"))
        lines.append(f"label:     aadpodidbinding={info.get('aadpodbinding_label') or '(none)'}")
    lines.append(f"nmi:       chain {'installed' if chain.get('installed') else 'NOT installed'}"
                 f"{'' if chain.get('required', True) else ' (not managed)'}, caches "
                 f"{'synced' if chain.get('caches_synced') else 'NOT synced'}, "
                 + ("ready" if chain.get("ready") else "not ready: " + ", ".join(chain.get("not_ready") or [])))
    identity = report.get("identity")
    answer = f"{report.get('status')} ({report.get('reason')})"
    if identity and report.get("status") == 200:
        answer += f" identity {identity['namespace']}/{identity['name']} client ID {identity['client_id']}"
    lines += [f"verdict:   {answer}", f"why:       {report.get('summary')}"]
    rows = report.get("bindings") or []
    if rows:
        lines.append("bindings:")
        for row in rows:
            mark = "+" if row.get("reason") in ("bound", "mic-assigned") else "-"
            lines.append(f"  {mark} {row['binding']} -> {row['identity']} (weight {row['weight']}): "
                         f"{row['reason']}: {row['detail']}")
        if report.get("bindings_omitted"):
            lines.append(f"  ... and {report['bindings_omitted']} more")
    for entry in report.get("token_cache") or []:
        lines.append(f"cached:    {entry['resource']} obtained {entry['age_seconds']:.0f}s ago, "
                     f"expires in {entry['expires_in']}s")
    if identity and report.get("status") == 200 and not report.get("token_cache"):
        lines.append("cached:    no token cached" + (f" for {report['request']['resource']}"
                                                     if report.get("request", {}).get("resource") else ""))
    return "\n".join(lines)
