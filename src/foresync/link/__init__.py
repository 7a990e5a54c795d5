"""The replication link between the two sites: frames and messages (pure)."""
