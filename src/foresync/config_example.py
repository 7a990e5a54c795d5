"""`foresync config example`: a commented site config that loads as it is.

The two roles get defaults that fit together on one machine (each site's link ``peer`` is the
other's ``listen``, distinct NBD and admin ports, files named after the role), so the README's
quick start is two commands, not pasted TOML. Every key the loader knows is there, the optional
ones commented out at their default; tests load the output with ``config.load`` and run ``init``
on it, and check that it names every key of ``config.KNOWN_KEYS``.
"""

from __future__ import annotations

from foresync.units import parse_hostport

# (nbd listen, link listen, admin listen) per role; the peer defaults to the other's link listen.
_PORTS = {"primary": ("127.0.0.1:10809", "127.0.0.1:7801", "127.0.0.1:7901"),
          "secondary": ("127.0.0.1:10810", "127.0.0.1:7802", "127.0.0.1:7902")}
_OTHER = {"primary": "secondary", "secondary": "primary"}


def example(role: str, peer: str | None = None, name: str = "vol0", size: str = "256MiB",
            link_listen: str | None = None) -> str:
    """The text of a commented config for a site that starts as ``role``."""
    nbd, link, admin = _PORTS[role]
    link = link_listen or link
    peer = peer or _PORTS[_OTHER[role]][1]
    parse_hostport(peer, "--peer")  # a typo is refused here, not when the site first dials
    parse_hostport(link, "--listen")
    return f"""\
# foresync site config: the {role} site of volume {name!r}.
# Written by `foresync config example --role {role}`; every key is described in
# docs/operations.md. Relative paths are relative to this file. Then:
#   foresync init --config THIS.toml --role {role}
#   foresync run --config THIS.toml

[volume]
name = "{name}"                 # the same on both sites
data = "{role}.img"             # volume file or block device (a missing file is created sparse)
size = "{size}"                 # the same on both sites; 256MiB, 1GiB, 4096 ...
meta = "{role}.meta"            # this site's metadata directory (identity, record, journal)

[nbd]
listen = "{nbd}"        # served only while this site is the primary
# export = "{name}"              # export name (default: [volume] name)
# tls_dir = "nbd-tls"            # ca-cert.pem, server-cert.pem, server-key.pem: require TLS
# tls_verify_client = false      # with tls_dir: demand client certificates
# max_connections = 64
# max_in_flight = 256
# max_in_flight_size = "64MiB"
# max_option_size = "64KiB"
# handshake_timeout = 30.0       # seconds
# idle_timeout = 60.0            # seconds
# trace = "nbd.trace"            # record every NBD request here, for `foresync tune`

[link]
listen = "{link}"         # where the other site dials this one
peer = "{peer}"           # the other site's [link] listen
mode = "lookahead"               # lookahead | sync | async: the same on both sites
# window = "64MiB"               # most bytes sent and not yet applied (the most a failover loses)
# heartbeat = 1.0                # seconds between pings
# timeout = 10.0                 # seconds without an answer before the link is lost
# on_disconnect = "continue"     # continue | block: writes while the secondary is away
# block_timeout = 30.0           # with on_disconnect = "block": then continue anyway
# resync_rate_max = "100MiB"     # per second; unset = unlimited
# secret_file = "link.secret"    # shared secret, the same file on both sites
# tls_dir = "link-tls"           # TLS on the link (ca-cert.pem, server-*, client-*)
# max_frame_size = "33MiB"

[record]
extent_size = "1MiB"             # the same on both sites; a power of two >= 4096
capacity = 1024                  # extents: the failback copies at most capacity x extent_size
# bound = "1GiB"                 # or the same limit in bytes (capacity = bound / extent_size)
lookahead = 4                    # extents predicted beyond each miss
# predictor = "next"             # next | history: the same on both sites
# eviction = "s3fifo"            # s3fifo | generations | lru
# watermark_interval = 0.05      # seconds

[admin]
listen = "{admin}"        # /status, /metrics, /events and the admin actions
# token_file = "admin.token"     # required when listen is not loopback

# [log]
# format = "text"                # text | json (one JSON object a line, for collectors)

# [s3]                           # S3 objects (issue 18), served by the primary, mirrored over the link
# listen = "127.0.0.1:9000"
# credentials_file = "s3.keys"   # lines: ACCESS_KEY_ID SECRET
# tls_dir = "s3-tls"             # server-cert.pem, server-key.pem: serve HTTPS
# dir = "objects"                # the object store (default: <[volume] meta>/objects)
# record_capacity = 4096         # names in the record of objects
# record_size = "1MiB"           # bytes of names in it
# lookahead = 8                  # predicted names a miss may add
# prefix_entry_max = 64          # names one directory entry of the record may cover; 0: off
# mirror_parts = true            # multipart parts mirrored as uploaded; false: whole at Complete
# window = "64MiB"               # object bytes sent and not yet durable there; more waits

# [cluster]                      # automatic failover with fencing on etcd (operations.md 11)
# etcd = ["http://127.0.0.1:2379"]  # the etcd members; https:// needs ca_file
# lease_ttl = "5s"               # failover about lease_ttl after a crash
# name = "foresync"              # keys under /foresync/<name>/
# site = "a"                     # this site's name in etcd (default: the file's stem)
# ca_file = "etcd-ca.pem"        # TLS: the CA of the etcd servers
# cert_file = "etcd-client.pem"  # TLS client certificate and key, if etcd asks
# key_file = "etcd-client-key.pem"
# user = "foresync"              # etcd authentication, with password_file
# password_file = "etcd.password"
"""
