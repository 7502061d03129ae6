"""nmi's node side: the `aad-metadata` chain in table nat (SPEC §5). Never imports `nmi`.

rules, failclosed (pure planning) -> backend (legacy, python-iptables) / nft (iptables-nft-restore) -> supervisor.
"""

from .backend import Backend, LegacyBackend
from .detect import BackendChoice, choose_mode, detect_backend, detect_mode, open_backend
from .errors import BackendUnavailable, IptablesError, XtablesLockTimeout
from .failclosed import REJECT_CHAIN, NodeRules, Transaction, reject_rule
from .lock import DEFAULT_LOCK_PATH, XtablesLock
from .nft import NftBackend
from .node import ConntrackError, check_kubenet, check_route_localnet, delete_conntrack
from .rules import CHAIN, ActualState, ChainSpec, Plan, dnat_target, parse_save, plan, removal_plan
from .supervisor import REJECT, REMOVE, check_and_repair, remove_chain, supervise

__all__ = [
    "REJECT", "REJECT_CHAIN", "REMOVE", "NodeRules", "Transaction", "reject_rule",
    "CHAIN", "DEFAULT_LOCK_PATH", "ActualState", "Backend", "BackendChoice", "BackendUnavailable", "ChainSpec",
    "ConntrackError", "IptablesError", "LegacyBackend", "NftBackend", "Plan", "XtablesLock", "XtablesLockTimeout",
    "check_and_repair", "check_kubenet", "check_route_localnet", "choose_mode", "delete_conntrack",
    "detect_backend", "detect_mode", "dnat_target", "open_backend", "parse_save", "plan", "remove_chain",
    "removal_plan", "supervise",
]
