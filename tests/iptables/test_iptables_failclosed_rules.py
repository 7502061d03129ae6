"""Pure tests of the fail-closed swap: what the reject is, and that every step of every swap leaves pods either
redirected to nmi or rejected — checked on the model for every starting state, before any kernel is involved."""

from __future__ import annotations

import itertools

import pytest

from iptables.failclosed import (REJECT, REJECT_CHAIN, NodeRules, closed_transaction, open_transaction,
                                 reject_rule, reject_save_lines, removal_transaction)
from iptables.nft import render_transaction
from iptables.rules import CHAIN, JUMP_RULE, ActualState, ChainSpec, plan_chain
from tests.iptables.fake_backend import apply_steps

SPEC = ChainSpec("169.254.169.254", 80, "10.244.0.1", 2579)
REJECT_RULE = ("-d 169.254.169.254/32 -p tcp -m addrtype ! --src-type LOCAL -m tcp --dport 80 "
               "-j REJECT --reject-with tcp-reset")
REJECT_JUMP = f"-j {REJECT_CHAIN}"
KUBE_NAT = ("-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",)
KUBE_FILTER = ("-m conntrack --ctstate NEW -j KUBE-FORWARD",)


def redirected(rules: NodeRules) -> bool:
    """Pods' metadata traffic goes to nmi: the chain holds the DNAT and PREROUTING jumps to it first."""
    prerouting = rules.nat.rules("PREROUTING")
    return bool(prerouting) and prerouting[0] == JUMP_RULE and SPEC.dnat_rule in rules.nat.rules(CHAIN)


def rejected(rules: NodeRules) -> bool:
    """Pods' metadata traffic is reset: the reject chain holds the rule and INPUT and FORWARD jump to it first."""
    hooks_ok = all(rules.filter.rules(hook)[:1] == (REJECT_JUMP,) for hook in REJECT.hooks)
    return hooks_ok and reject_rule(SPEC) in rules.filter.rules(REJECT_CHAIN)


def foreign(rules: NodeRules) -> tuple[tuple[str, ...], ...]:
    """The rules in the built-in chains that are not nmi's jumps."""
    hooks = ((rules.nat, "PREROUTING"), (rules.filter, "INPUT"), (rules.filter, "FORWARD"))
    return tuple(tuple(rule for rule in table.rules(hook) if rule not in (JUMP_RULE, REJECT_JUMP))
                 for table, hook in hooks)


def node(*, nat_chain=None, prerouting=KUBE_NAT, reject_chain=None, input_=(), forward=KUBE_FILTER) -> NodeRules:
    nat = {"PREROUTING": prerouting, "KUBE-SERVICES": ()}
    if nat_chain is not None:
        nat[CHAIN] = nat_chain
    filter_ = {"INPUT": input_, "FORWARD": forward, "OUTPUT": ()}
    if reject_chain is not None:
        filter_[REJECT_CHAIN] = reject_chain
    return NodeRules(nat=ActualState(nat), filter=ActualState(filter_))


SERVING = node(nat_chain=SPEC.chain_rules, prerouting=(JUMP_RULE, *KUBE_NAT))
CLOSED = node(reject_chain=(REJECT_RULE,), input_=(REJECT_JUMP,), forward=(REJECT_JUMP, *KUBE_FILTER))
# Whatever a crash, an operator or an older nmi may leave behind.
STARTS = {
    "fresh node": node(),
    "serving": SERVING,
    "closed": CLOSED,
    "both": NodeRules(nat=SERVING.nat, filter=CLOSED.filter),
    "reject jump missing from INPUT": node(reject_chain=(REJECT_RULE,), forward=(REJECT_JUMP,)),
    "reject chain flushed": node(reject_chain=(), input_=(REJECT_JUMP,), forward=(REJECT_JUMP,)),
    "reject for another port": node(reject_chain=(REJECT_RULE.replace("--dport 80", "--dport 8080"),),
                                    input_=(REJECT_JUMP,), forward=(*KUBE_FILTER, REJECT_JUMP)),
    "DNAT chain flushed": node(nat_chain=(), prerouting=(JUMP_RULE,)),
    "duplicate jumps": node(nat_chain=SPEC.chain_rules, prerouting=(JUMP_RULE, JUMP_RULE),
                            reject_chain=(REJECT_RULE,), input_=(REJECT_JUMP, REJECT_JUMP), forward=(REJECT_JUMP,)),
}


def test_the_reject_is_tcp_reset_of_non_local_sources_to_the_metadata_address():
    assert reject_rule(SPEC) == REJECT_RULE
    assert reject_save_lines(SPEC) == (f"-A INPUT {REJECT_JUMP}", f"-A FORWARD {REJECT_JUMP}",
                                       f"-A {REJECT_CHAIN} {REJECT_RULE}")


@pytest.mark.parametrize("start", STARTS, ids=list(STARTS))
def test_closing_ends_rejected_without_dnat_and_never_passes_through_neither(start):
    actual = STARTS[start]
    seen = apply_steps(actual, closed_transaction(actual, SPEC))
    final = seen[-1] if seen else actual
    assert rejected(final) and not final.nat.has_chain(CHAIN)
    assert foreign(final) == foreign(actual)
    if redirected(actual) or rejected(actual):  # protected before: protected after every commit
        assert all(redirected(state) or rejected(state) for state in seen)
    assert closed_transaction(final, SPEC).is_empty


@pytest.mark.parametrize("start", STARTS, ids=list(STARTS))
def test_opening_ends_redirected_without_reject_and_never_passes_through_neither(start):
    actual = STARTS[start]
    seen = apply_steps(actual, open_transaction(actual, SPEC))
    final = seen[-1] if seen else actual
    assert redirected(final) and not final.filter.has_chain(REJECT_CHAIN)
    assert not any(REJECT_JUMP in rule for rules in final.filter.chains.values() for rule in rules)
    assert foreign(final) == foreign(actual)
    if redirected(actual) or rejected(actual):
        assert all(redirected(state) or rejected(state) for state in seen)
    assert open_transaction(final, SPEC).is_empty


def test_swapping_back_and_forth_never_leaves_pods_unprotected():
    state = SERVING
    for planner in itertools.islice(itertools.cycle((closed_transaction, open_transaction)), 6):
        steps = apply_steps(state, planner(state, SPEC))  # planned from the state before the swap
        for state in steps:
            assert redirected(state) or rejected(state)
    assert state == SERVING


def test_the_new_protection_is_committed_before_the_old_one_goes():
    closing = closed_transaction(SERVING, SPEC).steps
    assert [step.layout.table for step in closing] == ["filter", "nat"]
    assert closing[0].chain_rules == (REJECT_RULE,) and closing[1].delete_chain
    opening = open_transaction(CLOSED, SPEC).steps
    assert [step.layout.table for step in opening] == ["nat", "filter"]
    assert opening[0].chain_rules == SPEC.chain_rules and opening[1].delete_chain


def test_restore_input_puts_the_sections_in_commit_order():
    text = render_transaction(closed_transaction(SERVING, SPEC))
    assert text.splitlines() == [
        "*filter", f":{REJECT_CHAIN} - [0:0]", f"-F {REJECT_CHAIN}", f"-A {REJECT_CHAIN} {REJECT_RULE}",
        f"-I INPUT 1 {REJECT_JUMP}", f"-I FORWARD 1 {REJECT_JUMP}", "COMMIT",
        "*nat", f"-D PREROUTING {JUMP_RULE}", f"-F {CHAIN}", f"-X {CHAIN}", "COMMIT",
    ]
    assert render_transaction(closed_transaction(CLOSED, SPEC)) == ""


def test_a_misplaced_reject_jump_is_moved_first_in_every_hook():
    actual = node(reject_chain=(REJECT_RULE,), input_=("-j ACCEPT", REJECT_JUMP), forward=(REJECT_JUMP,))
    repair = plan_chain(actual.filter, REJECT, (REJECT_RULE,))
    assert repair.reasons == (f"jump to {REJECT_CHAIN} is not first in INPUT",)
    assert repair.delete_rules == (("INPUT", REJECT_JUMP), ("FORWARD", REJECT_JUMP)) and repair.insert_jump


@pytest.mark.parametrize("start", STARTS, ids=list(STARTS))
def test_removal_leaves_nothing_of_nmi_whatever_was_there(start):
    actual = STARTS[start]
    seen = apply_steps(actual, removal_transaction(actual))
    final = seen[-1] if seen else actual
    assert not final.nat.has_chain(CHAIN) and not final.filter.has_chain(REJECT_CHAIN)
    assert foreign(final) == foreign(actual)
    assert not any(rule in (JUMP_RULE, REJECT_JUMP) for table in (final.nat, final.filter)
                   for rules in table.chains.values() for rule in rules)
    assert removal_transaction(final).is_empty
