"""Local block storage: the backend interface and its file and in-memory implementations."""
