"""The secondary's record journal: append-only, CRC32C per entry, group commit, checkpoints."""
