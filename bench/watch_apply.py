"""nmi's own cost of keeping its caches: initial lists, watch events applied per second, bytes kept per object.

Runs nmi's real Informer (thread, ndjson framing, JSON parsing, projection, hand-over to the loop, stores) in this
process against canned API answers of realistic size (`bench.objects`), so the figures are nmi's work and not the
fake API server's (which is Python too and slower than a real one). The lists are paged as nmi asks for them and
encoded before the clock starts, so the list CPU is nmi's alone. `python -m bench.watch_apply` prints JSON.

Bytes per object are what the stores retain after the raw JSON is gone (tracemalloc, in a separate pass so the
timing passes run untraced), everything included: the value object, its strings, and the index entries.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import json
import sys
import threading
import time
import tracemalloc
from typing import Any, Callable

from nmi.cache import IdentityIndex
from nmi.pod_index import PodIndex
from nmi.kube.informer import Informer, WatchTarget
from nmi.kube.projection import project_binding, project_identity, project_pod

from .objects import binding, identity, pod

NODE = "bench-node"


def world(*, pods: int, identities: int, namespaces: int) -> dict[str, list[dict[str, Any]]]:
    """`pods` pods on the node; `identities` AzureIdentities and as many bindings over `namespaces` namespaces."""
    return {
        "pods": [pod(i, namespace=f"ns-{i % namespaces:03d}", ip=f"10.244.{i // 250}.{i % 250 + 1}", node=NODE,
                     labels={"aadpodidbinding": f"selector-{i:05d}"}) for i in range(pods)],
        "azureidentities": [identity(i, namespace=f"ns-{i % namespaces:03d}") for i in range(identities)],
        "azureidentitybindings": [binding(i, namespace=f"ns-{i % namespaces:03d}") for i in range(identities)],
    }


class _Answer:
    """What `list_call(..., _preload_content=False)` returns: a list body, or a watch stream of chunks."""

    def __init__(self, data: bytes = b"", chunks: list[bytes] | None = None, *, hold: threading.Event | None = None,
                 on_first: Callable[[], None] | None = None) -> None:
        self.data, self._chunks, self._hold, self._on_first = data, chunks or [], hold, on_first

    def stream(self, amt: Any = None, decode_content: bool = False):
        if self._on_first is not None:
            self._on_first()
        yield from self._chunks  # one event per chunk, as the API server flushes them
        if self._hold is not None:
            self._hold.wait(60)

    def release_conn(self) -> None:
        pass

    def close(self) -> None:
        pass

    def shutdown(self) -> None:
        if self._hold is not None:
            self._hold.set()


def _list_body(items: list[dict[str, Any]]) -> bytes:
    return json.dumps({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "200000"},
                       "items": items}).encode()


# The page size nmi's informers list with (client-go's too): the canned answers are paged by it.
LIST_PAGE: int = inspect.signature(Informer).parameters["list_page"].default


def _pages(items: list[dict[str, Any]], limit: int) -> list[bytes]:
    """The list as the API server pages it: `limit` items a page, each page but the last naming the next one."""
    pages = []
    for number, start in enumerate(range(0, max(1, len(items)), limit)):
        more = {"continue": str(number + 1)} if start + limit < len(items) else {}
        pages.append(json.dumps({"kind": "List", "apiVersion": "v1",
                                 "metadata": {"resourceVersion": "200000", **more},
                                 "items": items[start:start + limit]}).encode())
    return pages


def _canned(items: list[dict[str, Any]], events: list[bytes], *, started: list[float],
            stop: threading.Event, list_page: int = LIST_PAGE) -> Callable[..., _Answer]:
    # Encoded here, before the clock starts: encoding is the API server's work, not nmi's.
    pages = _pages(items, list_page)
    watches = 0

    def list_call(**kwargs: Any) -> _Answer:
        nonlocal watches
        if not kwargs.get("watch"):
            if kwargs.get("limit") != list_page:
                raise AssertionError(f"canned lists are paged by {list_page}, asked for {kwargs.get('limit')}")
            return _Answer(pages[int(kwargs.get("_continue") or 0)])
        watches += 1
        if watches == 1 and events:
            return _Answer(chunks=events, hold=stop, on_first=lambda: started.extend((time.perf_counter(), time.process_time())))
        return _Answer(hold=stop)

    return list_call


async def _run_informer(resource: str, project: Callable[[Any], Any], store: Any, items: list[dict[str, Any]],
                        events: list[bytes], *, changes_expected: int, counter: list[int],
                        list_page: int = LIST_PAGE) -> dict[str, float]:
    stop, started = threading.Event(), []
    done = asyncio.Event()
    target = WatchTarget(resource=resource, project=project,
                         list_call=_canned(items, events, started=started, stop=stop, list_page=list_page))
    informer = Informer(target, store, list_page=list_page)
    counter[0], expected_total = 0, changes_expected + 1  # +1: the list's replace
    counter.append(lambda: done.set() if counter[0] >= expected_total else None)
    list_started, list_cpu = time.perf_counter(), time.process_time()
    task = asyncio.create_task(informer.run())
    await informer.synced.wait()
    list_seconds, list_cpu = time.perf_counter() - list_started, time.process_time() - list_cpu
    await asyncio.wait_for(done.wait(), 120)
    applied, applied_cpu = time.perf_counter(), time.process_time()
    stop.set()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    seconds, cpu = (applied - started[0], applied_cpu - started[1]) if events else (0.0, 0.0)
    # Wall time counts what else ran on the machine meanwhile; CPU time (all threads of this process) does not.
    return {"list_seconds": list_seconds, "list_cpu_seconds": list_cpu, "objects_listed": len(items),
            "events": len(events), "event_seconds": seconds, "event_cpu_seconds": cpu,
            "events_per_second": len(events) / seconds if seconds > 0 else 0.0,
            "events_per_cpu_second": len(events) / cpu if cpu > 0 else 0.0}


def _counting(counter: list[Any]) -> Callable[[], None]:
    def on_change() -> None:
        counter[0] += 1
        counter[-1]()
    return on_change


def _events(kind: str, objects: list[dict[str, Any]], count: int) -> list[bytes]:
    """`count` events cycling over `objects`, each with a newer resourceVersion (MODIFIED after the first round)."""
    out = []
    for n in range(count):
        obj = dict(objects[n % len(objects)])
        obj["metadata"] = dict(obj["metadata"], resourceVersion=str(300_000 + n))
        out.append(json.dumps({"type": kind if n < len(objects) else "MODIFIED", "object": obj}).encode() + b"\n")
    return out


async def measure_speed(objects: dict[str, list[dict[str, Any]]], *, events: int) -> dict[str, Any]:
    counter: list[Any] = [0]
    counted = _counting(counter)
    pods = PodIndex(on_size=lambda _size: counted())
    out = {"pods": await _run_informer("pods", project_pod, pods, objects["pods"],
                                       _events("MODIFIED", objects["pods"], events),
                                       changes_expected=events, counter=counter)}
    counter = [0]
    catalog = IdentityIndex(on_change=_counting(counter))
    fresh = [identity(100_000 + i, namespace=f"ns-{i % 100:03d}") for i in range(min(events, 20_000))]
    out["azureidentities"] = await _run_informer(
        "azureidentities", project_identity, catalog.identity_store, objects["azureidentities"],
        _events("ADDED", fresh, events), changes_expected=events, counter=counter)
    counter = [0]
    catalog = IdentityIndex(on_change=_counting(counter))
    out["azureidentitybindings"] = await _run_informer(
        "azureidentitybindings", project_binding, catalog.binding_store, objects["azureidentitybindings"], [],
        changes_expected=0, counter=counter)
    return out


def measure_footprint(objects: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    """Bytes the stores retain per object: raw JSON parsed and projected under tracemalloc, raw then dropped."""
    bodies = {name: _list_body(items) for name, items in objects.items()}
    out = {}
    for name, project, make_store in (("pods", project_pod, lambda: PodIndex()),
                                      ("azureidentities", project_identity, lambda: IdentityIndex().identity_store),
                                      ("azureidentitybindings", project_binding,
                                       lambda: IdentityIndex().binding_store)):
        store = make_store()
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        raw = json.loads(bodies[name])["items"]
        store.replace([item for item in map(project, raw) if item is not None])
        del raw
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        out[name] = kept / max(1, len(objects[name]))
        del store
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.watch_apply", description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=250)
    parser.add_argument("--identities", type=int, default=10_000, help="AzureIdentities, and as many bindings")
    parser.add_argument("--namespaces", type=int, default=100)
    parser.add_argument("--events", type=int, default=20_000, help="watch events per resource")
    args = parser.parse_args(argv)
    objects = world(pods=args.pods, identities=args.identities, namespaces=args.namespaces)
    result: dict[str, Any] = {"speed": asyncio.run(measure_speed(objects, events=args.events))}
    result["bytes_per_object"] = measure_footprint(objects)
    result["raw_json_bytes_per_object"] = {name: len(json.dumps(items[0])) for name, items in objects.items()}
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
