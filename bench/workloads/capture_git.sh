#!/bin/bash
# A developer's file-server workload with git: clone a repository (this one, from a bare copy),
# switch between 40 commits of its history, write and commit changes, repack with git gc; git
# set to fsync what it writes (core.fsync=all), as a server holding repositories should be.
source "$(dirname "$0")/capture_common.sh"
trace_begin git 1GiB
git clone -q --bare "$HERE/../.." "$WORK/origin.git"
sync
git -c core.fsync=all -c core.fsyncMethod=fsync clone -q "$WORK/origin.git" "$MNT/repo"
cd "$MNT/repo"
git config user.email capture@example.invalid && git config user.name capture
git config core.fsync all && git config core.fsyncMethod fsync
for c in $(git rev-list --max-count=80 HEAD); do git checkout -q "$c"; done
git checkout -q -B work
for i in $(seq 60); do
    head -c 200000 /dev/urandom | base64 > "data$((i % 7)).txt"
    git add -A && git commit -q -m "change $i"
done
git gc -q --aggressive
cd /
trace_end
