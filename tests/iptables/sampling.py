"""Continuous sampling of nmi's rules in a namespace, to check a swap never leaves pods unprotected."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

from iptables.failclosed import REJECT, REJECT_CHAIN, reject_rule
from iptables.rules import CHAIN, JUMP_RULE, ChainSpec, parse_save
from tests.iptables.netns import Namespace


def serving_and_rejecting(ns: Namespace, mode: str, spec: ChainSpec, *, first: str) -> tuple[bool, bool]:
    """(DNAT in place, reject in place) read with one iptables-save per table, `first` table first."""
    texts = {table: ns.run(f"iptables-{mode}-save", "-t", table).stdout
             for table in ((first, "filter" if first == "nat" else "nat"))}
    nat, filter_ = parse_save(texts["nat"], table="nat"), parse_save(texts["filter"], table="filter")
    dnat = nat.rules("PREROUTING")[:1] == (JUMP_RULE,) and spec.dnat_rule in nat.rules(CHAIN)
    reject = (all(filter_.rules(hook)[:1] == (REJECT.jump_rule,) for hook in REJECT.hooks)
              and reject_rule(spec) in filter_.rules(REJECT_CHAIN))
    return dnat, reject


@contextmanager
def sampling(ns: Namespace, mode: str, spec: ChainSpec, *, first: str) -> Iterator[list[tuple[bool, bool]]]:
    """Samples the rules continuously while the block runs: at least one sample before it, one after it.

    Reading two tables takes two reads. Reading first the table the swap changes second makes the pair sound:
    if the second change is already seen, the first one (earlier) is seen too. So `first` is the table a
    correct swap removes from (nat when closing, filter when opening)."""
    samples: list[tuple[bool, bool]] = []
    done = threading.Event()
    errors: list[BaseException] = []

    def sample() -> None:
        # Bounded in time, not count: a swap slowed by a loaded machine must still be sampled to its end.
        stop_at = time.monotonic() + 180
        try:
            while not done.is_set() and time.monotonic() < stop_at:
                samples.append(serving_and_rejecting(ns, mode, spec, first=first))
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not samples and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.005)
    before = len(samples)
    yield samples
    # The sample in progress now may have started before the block ended; the one after it did not.
    after = len(samples)
    deadline = time.monotonic() + 20
    while len(samples) < after + 2 and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.005)
    done.set()
    thread.join(15)
    assert not errors, errors
    assert before >= 1 and len(samples) >= after + 2, "sampler did not run around the swap"
