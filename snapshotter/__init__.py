"""The snapshotter of one host: content store, overlay snapshots, layer unpack, image import/export."""
