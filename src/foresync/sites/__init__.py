"""The asyncio adapters that run a site: the primary and secondary roles and the link transport."""
