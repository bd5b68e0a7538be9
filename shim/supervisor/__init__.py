"""The shim's single-threaded supervisor (``python -m shim.supervisor``): the parent of every
container of the host. :mod:`.server` is the process, :mod:`.child` what runs between fork and
exec, :mod:`.client` how the shim's RPC side talks to it."""
