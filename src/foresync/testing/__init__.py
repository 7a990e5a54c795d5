"""Test and benchmark kit: tools that stand in for the world around a site (a slow WAN link).

Nothing here is imported by the daemon; these modules may use asyncio and sockets freely.
"""
