"""An append-heavy service for capture_log.sh: writers append, sync in batches, rotate, compress."""

import argparse
import gzip
import os
import random
import shutil
import time

ROTATE_BYTES = 8 * 1024 * 1024
KEEP = 4


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--writers", type=int, default=8)
    args = parser.parse_args()
    os.makedirs(args.directory, exist_ok=True)
    rng = random.Random(3)
    files = [open(os.path.join(args.directory, f"svc{w}.log"), "ab")  # noqa: SIM115 (rotated by hand)
             for w in range(args.writers)]
    lines = [0] * args.writers
    end = time.monotonic() + args.seconds
    written = 0
    while time.monotonic() < end:
        w = min(int(rng.expovariate(0.5)), args.writers - 1)  # a few services log most
        line = f"{time.time():.6f} svc{w} req={rng.randrange(1 << 30):x} status=200 " \
               f"{'x' * rng.randint(20, 200)}\n".encode()
        files[w].write(line)
        written += len(line)
        lines[w] += 1
        if lines[w] % 64 == 0:
            files[w].flush()
            os.fdatasync(files[w].fileno())
        if files[w].tell() >= ROTATE_BYTES:
            files[w].close()
            path = os.path.join(args.directory, f"svc{w}.log")
            for k in range(KEEP, 0, -1):
                older = f"{path}.{k}.gz"
                if os.path.exists(older):
                    if k == KEEP:
                        os.remove(older)
                    else:
                        os.replace(older, f"{path}.{k + 1}.gz")
            with open(path, "rb") as src, gzip.open(f"{path}.1.gz", "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.remove(path)
            files[w] = open(path, "ab")  # noqa: SIM115
    for f in files:
        f.close()
    print(f"log: {written} bytes appended")


if __name__ == "__main__":
    main()
