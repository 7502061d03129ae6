"""Identity resolution: which identity a pod gets for a token request, and why. Pure: the caches are read through
`nmi.ports`, no foreign library, no I/O.

`resolve` is the entry (`resolution`): the broker acts on its `Decision`, `nmi explain` shows it. `rules` holds the
rules it applies one object at a time (selectors, exceptions, the MIC check, windows, ordering).
"""

from .decision import BINDINGS, MANAGED, NODE, STANDARD, WORKLOAD, Decision, Policy, View
from .resolution import binding_of, resolve

__all__ = ["BINDINGS", "MANAGED", "NODE", "STANDARD", "WORKLOAD", "Decision", "Policy", "View", "binding_of",
           "resolve"]
