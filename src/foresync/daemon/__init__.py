"""The asyncio process that runs a site: metadata, roles, the primary and secondary adapters."""
