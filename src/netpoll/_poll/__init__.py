"""The poll layer: OS readiness backends, pollers, fd operators and their manager."""
