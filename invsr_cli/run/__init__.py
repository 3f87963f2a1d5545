"""The run: the driver (lock, manifest, skip-existing, signals), shards, discovery, watch, and the executors that run units of work."""
