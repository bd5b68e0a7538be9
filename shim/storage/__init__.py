"""Storage of one host's containers beyond their rootfs: files of running containers (docker cp)
and the local driver's volumes. See :mod:`shim.storage.api`."""
