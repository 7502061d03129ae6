"""Chaos (issue 11 item 4): simulated pods ask the real nmi for tokens without pause while a seeded schedule cuts
watches, expires them (410), slows the API server, makes IMDS and Azure AD fail, throttle, hang briefly or reset,
and switches bindings under the pods. Every answer is checked against the invariant:

* a 200 names an identity the pod was bound to at some moment in [request start - PROPAGATION, answer];
* anything else is IMDS JSON (`error`, `error_description`), 429/503 with Retry-After; never 400 (every pod is
  always bound), never a reset, never a truncated body;
* no answer takes longer than ANSWER_BOUND.

When the faults stop, nmi converges (every pod gets its current identity, /readyz 200) within CONVERGENCE, with
fds and threads flat and RSS within a tolerance. Counts by status go to the terminal summary.
Seed: NMI_CHAOS_SEED (default 11); duration: NMI_CHAOS_SECONDS (default 10)."""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlencode

from fakes.aad import FakeAad
from fakes.imds import Fault
from fakes.kubeobjects import make_binding, make_identity, make_secret

from tests.faults.harness import REPORT, FaultyNmi, assert_documented, eventually, token_claims
from tests.faults.world import MANAGED_FLAGS, NODE, NS, X, Y, base_objects, pod

SEED = int(os.environ.get("NMI_CHAOS_SEED", "11"))
CHAOS_SECONDS = float(os.environ.get("NMI_CHAOS_SECONDS", "10"))
# A binding switch reaches answers within this: the watch event at once; while a watch is broken or relisting,
# nmi answers 503 rather than trust the cache it last saw (SPEC 7, "Stale caches are not trusted"), so an old
# identity can only come from the moment between the switch and its watch event. Observed: under 0.1 s.
PROPAGATION = 2.0
# Watch faults spaced apart so that a healthy watch resets the informer's backoff in between.
WATCH_FAULT_SPACING = 4.0
# Identity wait (0 in managed mode) + IMDS/Azure AD retry budget (10 s) + one attempt timeout (5 s) + slack.
ANSWER_BOUND = 20.0
CONVERGENCE = 40.0  # informer backoff cap (30 s) + a relist
SP_CLIENT_ID, SP_TENANT, SP_SECRET = "5e5e5e5e-0000-4000-8000-0000000000c5", "chaos-tenant", "chaos-secret-value"
PODS = [f"127.0.0.{81 + n}" for n in range(6)]
SELECTORS = {"x": X.client_id, "y": Y.client_id, "s": SP_CLIENT_ID}


@dataclass
class Binding:
    """What each pod is bound to over time: (monotonic time the switch was issued, client ID)."""

    history: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def switch(self, ip: str, client_id: str) -> None:
        with self.lock:
            self.history.setdefault(ip, []).append((time.monotonic(), client_id))

    def allowed(self, ip: str, start: float, end: float) -> set[str]:
        with self.lock:
            changes = list(self.history[ip])
        allowed = {cid for when, cid in changes if start - PROPAGATION < when <= end}
        before = [cid for when, cid in changes if when <= start - PROPAGATION]
        if before:
            allowed.add(before[-1])
        return allowed

    def staleness(self, ip: str, client_id: str, start: float, end: float) -> float:
        """How long before `start` the pod stopped being bound to `client_id` (0: bound at some moment of the
        request, from `start` to `end`)."""
        with self.lock:
            changes = list(self.history[ip])
        stale = None
        for (when, cid), (until, _) in zip(changes, changes[1:] + [(float("inf"), None)]):
            if cid != client_id:
                continue
            if when <= end and until >= start:
                return 0.0
            if until < start:
                stale = start - until if stale is None else min(stale, start - until)
        return stale or 0.0

    def current(self, ip: str) -> str:
        with self.lock:
            return self.history[ip][-1][1]


@dataclass
class Tally:
    statuses: Counter = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    slowest: float = 0.0
    stalest: float = 0.0  # the oldest binding seen in a 200, seconds after it was switched away
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, status: str, seconds: float, problem: str | None = None) -> None:
        with self.lock:
            self.statuses[status] += 1
            self.slowest = max(self.slowest, seconds)
            if problem:
                self.violations.append(problem)


def check(nmi: FaultyNmi, ip: str, resource: str, bindings: Binding, tally: Tally) -> None:
    query = urlencode({"api-version": "2018-02-01", "resource": resource})
    start = time.monotonic()
    try:
        answer = nmi.get("/metadata/identity/oauth2/token?" + query, source=ip, headers={"Metadata": "true"},
                         timeout=ANSWER_BOUND + 5)
    except Exception as exc:  # noqa: BLE001 - a reset, a truncated answer or a timeout breaks the invariant
        tally.record(type(exc).__name__, time.monotonic() - start, f"{ip}: {exc!r}")
        return
    end = time.monotonic()
    problem = None
    if end - start > ANSWER_BOUND:
        problem = f"{ip}: answer after {end - start:.1f}s"
    if answer.status == 200:
        body = answer.json
        allowed = bindings.allowed(ip, start, end)
        with tally.lock:
            tally.stalest = max(tally.stalest, bindings.staleness(ip, body["client_id"], start, end))
        if body["client_id"] not in allowed:
            problem = (f"{ip}: 200 for {body['client_id']} at {time.time():.3f}, bound to {sorted(allowed)} "
                       f"({bindings.staleness(ip, body['client_id'], start, end):.1f}s after the switch)")
        elif body["client_id"] != SP_CLIENT_ID and token_claims(answer)["appid"] != body["client_id"]:
            problem = f"{ip}: token of another identity than its client_id"
        elif body["resource"] != resource:
            problem = f"{ip}: token for another resource"
    else:
        try:
            assert answer.status in (429, 503), "every pod is always bound: only transient failures are right"
            assert_documented(answer)
        except (AssertionError, ValueError) as exc:
            problem = f"{ip}: {answer.status} {answer.body[:200]!r} ({exc})"
    tally.record(str(answer.status), end - start, problem)


class Schedule:
    """The seeded faults. Each step is one call on the fakes' loop; slow lists are undone by a later step."""

    def __init__(self, rng: random.Random, fakes, aad: FakeAad, bindings: Binding) -> None:
        self.rng, self.fakes, self.aad, self.bindings = rng, fakes, aad, bindings
        self.labels = {ip: ("x", "y", "s")[n % 3] for n, ip in enumerate(PODS)}
        self.done: Counter = Counter()
        self.last_watch_fault = 0.0

    def step(self) -> None:
        api, imds, rng = self.fakes.api, self.fakes.imds, self.rng
        action = rng.choice(["cut", "expire", "gone", "slow", "imds", "aad", "switch", "switch"])
        if action in ("cut", "expire", "gone"):
            if time.monotonic() - self.last_watch_fault < WATCH_FAULT_SPACING:
                action = "switch"
            else:
                self.last_watch_fault = time.monotonic()
        self.done[action] += 1
        if action == "cut":
            self.fakes.call(lambda: api.cut_watches(rng.choice([None, "pods", "azureidentitybindings"])))
        elif action == "expire":
            self.fakes.call(lambda: (api.compact(), api.cut_watches()))
        elif action == "gone":
            self.fakes.call(lambda: api.fail_next(rng.randint(1, 2), status=410, verb="watch"))
            self.fakes.call(lambda: api.cut_watches(rng.choice([None, "pods"])))
        elif action == "slow":
            delay = rng.uniform(0.2, 1.5)
            self.fakes.call(lambda: setattr(api, "list_delay", delay))
        elif action in ("imds", "aad"):
            # Retry-After past nmi's retry budget makes the failure reach the pod at once (429 / 503).
            fault = rng.choice([Fault(500), Fault(429, retry_after="1"), Fault(429, retry_after="30"),
                                Fault(503, retry_after="2"), Fault(503, retry_after="30"), Fault(reset=True),
                                Fault(status=0, delay=0.5), Fault(200, text="{not json")])
            target = imds if action == "imds" else self.aad
            self.fakes.call(lambda: target.fail_next(rng.randint(1, 4), fault))
        else:
            self.switch(rng.choice(PODS))
        if action != "slow" and rng.random() < 0.3:
            self.fakes.call(lambda: setattr(api, "list_delay", 0.0))

    def switch(self, ip: str) -> None:
        label = self.rng.choice([s for s in SELECTORS if s != self.labels[ip]])
        self.labels[ip] = label
        self.bindings.switch(ip, SELECTORS[label])  # issued now: the old identity is fine for PROPAGATION more
        self.fakes.put(pod(f"chaos-{ip.rsplit('.', 1)[1]}", ip, label))

    def stop_faults(self) -> None:
        self.fakes.call(lambda: (setattr(self.fakes.api, "list_delay", 0.0), self.fakes.imds.clear_faults(),
                                 self.aad.clear_faults(), self.fakes.api.clear_faults()))


def test_chaos_invariant_holds_for_every_answer_and_nmi_converges(fakes, tmp_path):
    rng = random.Random(SEED)
    fakes.start()
    aad = FakeAad()
    fakes.run(aad.start())
    aad.register_secret_app(SP_TENANT, SP_CLIENT_ID, SP_SECRET)
    ca = aad.write_ca_bundle(tmp_path / "ca.pem")
    bindings = Binding()
    schedule = Schedule(rng, fakes, aad, bindings)
    for obj in [*base_objects(), make_secret("sp-secret", NS, {"clientSecret": SP_SECRET}),
                make_identity("id-s", NS, type=1, client_id=SP_CLIENT_ID, tenant_id=SP_TENANT,
                              ad_endpoint=aad.authority_host, secret="sp-secret"),
                make_binding("bind-s", NS, identity="id-s", selector="s")]:
        fakes.put(obj)
    for ip in PODS:
        bindings.switch(ip, SELECTORS[schedule.labels[ip]])
        fakes.put(pod(f"chaos-{ip.rsplit('.', 1)[1]}", ip, schedule.labels[ip]))
    nmi = FaultyNmi(tmp_path, fakes, node=NODE, extra=[*MANAGED_FLAGS, "--allowed-authority-hosts=127.0.0.1"],
                    env={"REQUESTS_CA_BUNDLE": str(ca)})
    nmi.start()
    tally = Tally()
    stop = threading.Event()

    def simulated_pod(ip: str, pod_rng: random.Random) -> None:
        while not stop.is_set():
            # Mostly hits on a few resources; one in five a resource never asked before (a miss: upstream call).
            if pod_rng.random() < 0.2:
                resource = f"https://fresh-{pod_rng.randrange(10**9)}.example/"
            else:
                resource = f"https://app-{pod_rng.randrange(3)}.example/"
            check(nmi, ip, resource, bindings, tally)

    workers = [threading.Thread(target=simulated_pod, args=(ip, random.Random(SEED * 100 + n)), daemon=True)
               for n, ip in enumerate(PODS)]
    try:
        for worker in workers:
            worker.start()
        eventually(lambda: sum(tally.statuses.values()) >= 60, timeout=20, what="warm-up traffic")
        before = nmi.stats()

        chaos_until = time.monotonic() + CHAOS_SECONDS
        while time.monotonic() < chaos_until:
            schedule.step()
            time.sleep(rng.uniform(0.1, 0.6))
        schedule.stop_faults()

        def converged() -> bool:
            if nmi.readyz().status != 200:
                return False
            for ip in PODS:
                answer = nmi.token(source=ip)
                if answer.status != 200 or answer.json["client_id"] != bindings.current(ip):
                    return False
            return True

        eventually(converged, timeout=CONVERGENCE, interval=0.5, what="nmi converged after the faults")
        stop.set()
        for worker in workers:
            worker.join(ANSWER_BOUND + 10)
        after = nmi.stats()
    finally:
        stop.set()
        REPORT.append(f"chaos seed={SEED} {CHAOS_SECONDS:.0f}s: answers by status {dict(sorted(tally.statuses.items()))}"
                      f", slowest {tally.slowest:.2f}s, stalest identity {tally.stalest:.2f}s after its switch"
                      f" (bound {PROPAGATION:.0f}s), faults {dict(sorted(schedule.done.items()))}")
        assert nmi.stop() == 0, nmi.log()[-3000:]
        fakes.run(aad.stop())
    REPORT.append(f"chaos process before/after: {before} / {after}")
    print(REPORT[-2], REPORT[-1], sep="\n")
    assert not tally.violations, "\n".join(tally.violations[:20])
    assert tally.statuses["200"] > 0 and sum(tally.statuses.values()) >= 200
    # Flat up to nmi's pools, which fill on demand: 10 worker threads for MSAL; 5 IMDS + 10 Azure AD connections.
    assert after.threads <= before.threads + 10 and after.fds <= before.fds + 15, (before, after)
    assert after.rss_kib <= before.rss_kib * 1.3 + 16 * 1024, (before, after)
