"""Replication roles as pure cores: the primary, the secondary, and epoch histories."""
