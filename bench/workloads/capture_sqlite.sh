#!/bin/bash
# SQLite in WAL mode running a TPC-C-like mix (new orders, payments, deliveries) for 60 s,
# the way an embedded application uses it: one writer, a commit (fsync) per transaction.
source "$(dirname "$0")/capture_common.sh"
trace_begin sqlite 1GiB
python3 "$HERE/sqlite_oltp.py" "$MNT/app.db" --seconds "${SECONDS_RUN:-60}"
trace_end
