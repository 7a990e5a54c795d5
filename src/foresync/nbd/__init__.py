"""The NBD front end: a pure protocol core (wire, handshake, connection) and an asyncio server."""
