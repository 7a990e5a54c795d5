#!/bin/bash
# A developer's file-server workload with git: clone a repository (this one, from a bare copy),
# switch between 40 commits of its history, write and commit changes, repack with git gc.
source "$(dirname "$0")/capture_common.sh"
trace_begin git 1GiB
git clone -q --bare "$HERE/../.." "$WORK/origin.git"
sync
git clone -q "$WORK/origin.git" "$MNT/repo"
cd "$MNT/repo"
git config user.email capture@example.invalid && git config user.name capture
for c in $(git rev-list --max-count=40 HEAD); do git checkout -q "$c"; done
git checkout -q -B work
for i in $(seq 30); do
    head -c 200000 /dev/urandom | base64 > "data$((i % 7)).txt"
    git add -A && git commit -q -m "change $i"
done
git gc -q --aggressive
cd /
trace_end
