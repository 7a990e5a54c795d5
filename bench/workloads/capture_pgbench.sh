#!/bin/bash
# PostgreSQL (the OLTP database): pgbench's TPC-B-like test, scale 20 (about 300 MiB of tables),
# 4 clients for 60 s, with the cluster's data directory on the traced ext4.
source "$(dirname "$0")/capture_common.sh"
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin | tail -1)}
trace_begin pgbench 2GiB
chmod 755 "$WORK" "$MNT"
mkdir "$MNT/pg" && chown postgres: "$MNT/pg"
as_pg() { runuser -u postgres -- "$@"; }
as_pg "$PGBIN/initdb" -D "$MNT/pg" >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$MNT/pg" -o "-p 5499 -k /tmp -c listen_addresses=''" -l /tmp/foresync-capture-pg.log -w start >/dev/null
as_pg pgbench -h /tmp -p 5499 -i -q -s 20 postgres 2>/dev/null
as_pg pgbench -h /tmp -p 5499 -c 4 -j 2 -T "${SECONDS_RUN:-60}" postgres | grep -E "^tps|transactions actually"
as_pg "$PGBIN/pg_ctl" -D "$MNT/pg" -w stop >/dev/null
trace_end
