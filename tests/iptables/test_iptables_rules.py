"""Pure tests: the desired chain, planning, save parsing, backend choice, restore rendering."""

from __future__ import annotations

import pytest

from iptables.detect import choose_mode
from iptables.nft import render_restore
from iptables.rules import (CHAIN, JUMP_RULE, RETURN_RULE, ActualState, ChainSpec, Plan, dnat_target, is_jump_to_chain,
                            parse_save, plan, removal_plan)
from tests.iptables.fake_backend import apply_to

SPEC = ChainSpec("169.254.169.254", 80, "10.244.0.1", 2579)
DNAT = ("! -s 127.0.0.1/32 -d 169.254.169.254/32 -p tcp -m tcp --dport 80 "
        "-j DNAT --to-destination 10.244.0.1:2579")
GOOD_CHAIN = (DNAT, RETURN_RULE)
FOREIGN = "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"


def state(prerouting=(JUMP_RULE,), chain=GOOD_CHAIN, **others) -> ActualState:
    chains = {"PREROUTING": prerouting, "INPUT": (), "OUTPUT": (), "POSTROUTING": (), **others}
    if chain is not None:
        chains[CHAIN] = chain
    return ActualState(chains)


def test_chain_rules_are_exactly_the_spec_text():
    assert SPEC.chain_rules == (DNAT, "-j RETURN")
    assert SPEC.save_lines() == (
        "-A PREROUTING -j aad-metadata",
        f"-A aad-metadata {DNAT}",
        "-A aad-metadata -j RETURN",
    )


@pytest.mark.parametrize("listen, target", [
    ("0.0.0.0", "127.0.0.1"), ("127.0.0.1", "127.0.0.1"), ("10.240.0.4", "10.240.0.4"),
])
def test_dnat_target_replaces_only_the_wildcard_address(listen, target):
    assert dnat_target(listen) == target


@pytest.mark.parametrize("kwargs", [
    dict(metadata_ip="metadata", metadata_port=80, target_ip="127.0.0.1", target_port=2579),
    dict(metadata_ip="169.254.169.254", metadata_port="80", target_ip="127.0.0.1", target_port=2579),
    dict(metadata_ip="169.254.169.254", metadata_port=80, target_ip="::1", target_port=2579),
    dict(metadata_ip="169.254.169.254", metadata_port=80, target_ip="127.0.0.1", target_port=70000),
])
def test_chain_spec_rejects_what_iptables_would_misread(kwargs):
    with pytest.raises(ValueError):
        ChainSpec(**kwargs)


def test_correct_state_needs_no_change():
    assert plan(state(), SPEC).is_empty


def test_foreign_rules_after_the_jump_are_left_alone():
    assert plan(state(prerouting=(JUMP_RULE, FOREIGN), **{"KUBE-SERVICES": ()}), SPEC).is_empty


# (situation, actual state, expected chain rewrite, expected deletions, expected jump insert, reason fragment)
DRIFT = [
    ("fresh node", ActualState({"PREROUTING": ()}), GOOD_CHAIN, (), True, "chain aad-metadata missing"),
    ("chain flushed", state(chain=()), GOOD_CHAIN, (), False, "is empty"),
    ("DNAT rule deleted", state(chain=(RETURN_RULE,)), GOOD_CHAIN, (), False, "lacks"),
    ("extra rule in chain", state(chain=(DNAT, "-j ACCEPT", RETURN_RULE)), GOOD_CHAIN, (), False, "extra rule"),
    ("DNAT rule duplicated", state(chain=(DNAT, DNAT, RETURN_RULE)), GOOD_CHAIN, (), False, "duplicated"),
    ("rules swapped", state(chain=(RETURN_RULE, DNAT)), GOOD_CHAIN, (), False, "out of order"),
    ("stale target port", state(chain=(DNAT.replace(":2579", ":2580"), RETURN_RULE)), GOOD_CHAIN, (), False,
     "lacks"),
    ("jump deleted", state(prerouting=(FOREIGN,)), None, (), True, "missing from PREROUTING"),
    ("rule inserted before jump", state(prerouting=(FOREIGN, JUMP_RULE)), None, (("PREROUTING", JUMP_RULE),),
     True, "not first"),
    ("jump duplicated", state(prerouting=(JUMP_RULE, FOREIGN, JUMP_RULE)), None,
     (("PREROUTING", JUMP_RULE), ("PREROUTING", JUMP_RULE)), True, "2 jumps"),
    ("jump with a match", state(prerouting=("-p tcp -j aad-metadata",)), None,
     (("PREROUTING", "-p tcp -j aad-metadata"),), True, "not plain"),
    ("goto instead of jump", state(prerouting=("-g aad-metadata",)), None, (("PREROUTING", "-g aad-metadata"),),
     True, "not plain"),
]


@pytest.mark.parametrize("situation, actual, chain_rules, deletions, insert, reason", DRIFT,
                         ids=[row[0] for row in DRIFT])
def test_drift_is_planned_as_one_repair(situation, actual, chain_rules, deletions, insert, reason):
    repair = plan(actual, SPEC)
    assert repair.chain_rules == chain_rules
    assert repair.delete_rules == deletions
    assert repair.insert_jump is insert
    assert not repair.delete_chain
    assert reason in repair.describe()


def test_repair_plan_applied_to_the_state_gives_a_state_needing_nothing():
    for _, actual, *_ in DRIFT:
        assert plan(apply_to(actual, plan(actual, SPEC)), SPEC).is_empty


def test_removal_deletes_every_jump_from_every_chain_then_the_chain():
    actual = state(prerouting=(JUMP_RULE, FOREIGN, JUMP_RULE), OUTPUT=("-p tcp -j aad-metadata",))
    removal = removal_plan(actual)
    assert removal.delete_rules == (("PREROUTING", JUMP_RULE), ("PREROUTING", JUMP_RULE),
                                    ("OUTPUT", "-p tcp -j aad-metadata"))
    assert removal.delete_chain
    after = apply_to(actual, removal)
    assert not after.has_chain(CHAIN)
    assert after.rules("PREROUTING") == (FOREIGN,)


def test_removal_of_nothing_is_empty():
    assert removal_plan(state(prerouting=(FOREIGN,), chain=None)).is_empty


def test_a_comment_mentioning_the_chain_is_not_a_jump():
    assert not is_jump_to_chain('-m comment --comment "-j aad-metadata" -j ACCEPT')
    assert is_jump_to_chain("-s 10.0.0.0/8 -j aad-metadata")


SAVE = """# Generated by iptables-save v1.8.9 on Tue Nov 24 05:11:41 2026
*filter
:INPUT ACCEPT [0:0]
-A INPUT -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:aad-metadata - [0:0]
:KUBE-SERVICES - [0:0]
-A PREROUTING -j aad-metadata
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A aad-metadata ! -s 127.0.0.1/32 -d 169.254.169.254/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.244.0.1:2579
-A aad-metadata -j RETURN
COMMIT
# Completed on Tue Nov 24 05:11:41 2026
"""


def test_save_output_is_parsed_per_table_and_chain():
    actual = parse_save(SAVE)
    assert actual.rules("PREROUTING") == (JUMP_RULE, FOREIGN)
    assert actual.rules(CHAIN) == GOOD_CHAIN
    assert actual.has_chain("KUBE-SERVICES") and not actual.rules("KUBE-SERVICES")
    assert not actual.has_chain("INPUT")  # that one is in filter
    assert plan(actual, SPEC).is_empty


def test_a_table_missing_from_save_output_has_no_chains():
    assert parse_save("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n").chains == {}


HINT = "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n"
RULES = "*nat\n-A PREROUTING -j KUBE-SERVICES\n-A KUBE-SERVICES -j RETURN\nCOMMIT\n"


@pytest.mark.parametrize("legacy, nft, mode", [
    ("", "", "nft"),
    (RULES, "", "legacy"),
    ("", RULES, "nft"),
    (RULES, RULES, "nft"),
    (HINT, RULES + RULES, "legacy"),
    (RULES + RULES, HINT, "nft"),
    (HINT, HINT, "nft"),
])
def test_backend_follows_kubelet_hint_then_rule_count_then_defaults_to_nft(legacy, nft, mode):
    assert choose_mode(legacy_save=legacy, nft_save=nft).mode == mode


def test_restore_input_rewrites_chain_and_moves_jump_in_one_transaction():
    text = render_restore(Plan(chain_rules=GOOD_CHAIN, delete_rules=(("PREROUTING", JUMP_RULE),), insert_jump=True))
    assert text.splitlines() == [
        "*nat",
        ":aad-metadata - [0:0]",
        "-F aad-metadata",
        f"-A aad-metadata {DNAT}",
        "-A aad-metadata -j RETURN",
        "-D PREROUTING -j aad-metadata",
        "-I PREROUTING 1 -j aad-metadata",
        "COMMIT",
    ]


def test_restore_input_for_removal_deletes_jumps_before_the_chain():
    text = render_restore(removal_plan(state()))
    assert text.splitlines() == ["*nat", "-D PREROUTING -j aad-metadata", "-F aad-metadata", "-X aad-metadata",
                                 "COMMIT"]

