"""The README's main job: nmi serving real clients on an embedded default (fake API server and fake IMDS)."""
