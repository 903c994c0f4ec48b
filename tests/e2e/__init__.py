"""End-to-end topology: a sticky HAProxy, three service processes, Redis and Prometheus."""
