"""Container networking on one host: bridges, veths, addresses, routes, NAT, published ports,
generated /etc files and the embedded DNS resolver (see :mod:`shim.network.api`)."""
