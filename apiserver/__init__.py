"""Berth's API server: the Docker Engine API over the cluster's shims and snapshotters."""

BERTH_VERSION = "0.1.0"
# What we advertise: the docker CLI 28 negotiates min(1.50, ours); docker-py uses it verbatim.
API_VERSION = "1.50"
MIN_API_VERSION = "1.24"
# The Go client reads the OS from "Docker/<version> (<os>)" (client/utils.go getDockerOS).
SERVER_HEADER = f"Docker/{BERTH_VERSION}-berth (linux)"
