"""nmi: a node-level Azure token broker for Kubernetes, drop-in for aad-pod-identity's NMI."""

__version__ = "0.1.0"
