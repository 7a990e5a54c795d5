#!/bin/bash
# A log / append-heavy service: log_service.py, 8 writers appending lines to their own logs with
# an fdatasync every 64 lines (as journald or a database's WAL archiver would), rotating at
# 8 MiB and compressing each rotated log with gzip, for 60 s.
source "$(dirname "$0")/capture_common.sh"
trace_begin log 1GiB
python3 "$HERE/log_service.py" "$MNT/log" --seconds "${SECONDS_RUN:-60}"
trace_end
