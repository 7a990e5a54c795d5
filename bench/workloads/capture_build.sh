#!/bin/bash
# A file-server / build workload: unpack a tarball of /usr/include (about 130 MiB, 20,000 files),
# generate and compile 300 C files with gcc through make -j2 into a static library and a program,
# then delete the whole tree.
source "$(dirname "$0")/capture_common.sh"
trace_begin build 1GiB
tar -C /usr -cf "$WORK/include.tar" include
tar -C "$MNT" -xf "$WORK/include.tar"
sync
mkdir "$MNT/src"
for i in $(seq 300); do
    printf '#include <stdio.h>\n#include <string.h>\nint f%d(const char *s) { char b[64]; snprintf(b, sizeof b, "%%s-%d", s); return (int)strlen(b) * %d; }\n' "$i" "$i" "$i" > "$MNT/src/f$i.c"
done
{ echo 'int main(void) { int t = 0;'; for i in $(seq 300); do echo "extern int f$i(const char *); t += f$i(\"x\");"; done; echo 'return t & 1; }'; } > "$MNT/src/main.c"
cat > "$MNT/src/Makefile" <<'MK'
OBJS := $(patsubst %.c,%.o,$(filter-out main.c,$(wildcard *.c)))
prog: main.o libf.a ; gcc -o $@ main.o libf.a
libf.a: $(OBJS) ; ar rcs $@ $(OBJS)
%.o: %.c ; gcc -O2 -g -c -o $@ $<
MK
make -s -C "$MNT/src" -j2
sync
rm -rf "$MNT/include" "$MNT/src"
sync
fstrim "$MNT" || true
trace_end
