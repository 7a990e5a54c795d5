"""A TPC-C-like transaction mix against SQLite (WAL mode): the workload of capture_sqlite.sh.

10 warehouses x 10 districts x 3000 customers, 100,000 items and their stock; then, for the
given time, transactions in TPC-C's proportions: new order 45%, payment 43%, order status 4%
(read only), delivery 4%, stock level 4% (read only). Each commits on its own, as an application
would; keys follow TPC-C's non-uniform NURand distribution, so some rows are hot.
"""

import argparse
import random
import sqlite3
import time

W, D, C, ITEMS = 10, 10, 3000, 100_000


def nurand(rng: random.Random, a: int, x: int, y: int) -> int:
    return (((rng.randint(0, a) | rng.randint(x, y)) + 42) % (y - x + 1)) + x


def load(db: sqlite3.Connection) -> None:
    db.executescript("""
        CREATE TABLE warehouse(w INTEGER PRIMARY KEY, ytd REAL, pad TEXT);
        CREATE TABLE district(w INT, d INT, ytd REAL, next_o INT, pad TEXT, PRIMARY KEY(w, d));
        CREATE TABLE customer(w INT, d INT, c INT, balance REAL, data TEXT, PRIMARY KEY(w, d, c));
        CREATE TABLE item(i INTEGER PRIMARY KEY, price REAL, name TEXT);
        CREATE TABLE stock(w INT, i INT, qty INT, data TEXT, PRIMARY KEY(w, i));
        CREATE TABLE orders(w INT, d INT, o INT, c INT, carrier INT, PRIMARY KEY(w, d, o));
        CREATE TABLE order_line(w INT, d INT, o INT, n INT, i INT, qty INT, PRIMARY KEY(w, d, o, n));
        CREATE TABLE new_order(w INT, d INT, o INT, PRIMARY KEY(w, d, o));
        CREATE TABLE history(w INT, d INT, c INT, amount REAL, at REAL);
    """)
    rng = random.Random(1)
    db.executemany("INSERT INTO item VALUES (?,?,?)", ((i, rng.uniform(1, 100), "x" * 24) for i in range(ITEMS)))
    for w in range(W):
        db.execute("INSERT INTO warehouse VALUES (?,0,?)", (w, "w" * 80))
        db.executemany("INSERT INTO stock VALUES (?,?,?,?)", ((w, i, 50, "s" * 50) for i in range(0, ITEMS, 4)))
        for d in range(D):
            db.execute("INSERT INTO district VALUES (?,?,0,1,?)", (w, d, "d" * 80))
            db.executemany("INSERT INTO customer VALUES (?,?,?,0,?)", ((w, d, c, "c" * 300) for c in range(C)))
        db.commit()


def run(db: sqlite3.Connection, seconds: float) -> int:
    rng = random.Random(2)
    end, done = time.monotonic() + seconds, 0
    while time.monotonic() < end:
        w, d, kind = rng.randrange(W), rng.randrange(D), rng.random()
        c = nurand(rng, 1023, 0, C - 1)
        if kind < 0.45:
            (o,) = db.execute("SELECT next_o FROM district WHERE w=? AND d=?", (w, d)).fetchone()
            db.execute("UPDATE district SET next_o=next_o+1 WHERE w=? AND d=?", (w, d))
            db.execute("INSERT INTO orders VALUES (?,?,?,?,NULL)", (w, d, o, c))
            db.execute("INSERT INTO new_order VALUES (?,?,?)", (w, d, o))
            for n in range(rng.randint(5, 15)):
                i = nurand(rng, 8191, 0, ITEMS - 1) & ~3
                db.execute("UPDATE stock SET qty=qty-1 WHERE w=? AND i=?", (w, i))
                db.execute("INSERT INTO order_line VALUES (?,?,?,?,?,?)", (w, d, o, n, i, rng.randint(1, 10)))
        elif kind < 0.88:
            amount = rng.uniform(1, 5000)
            db.execute("UPDATE warehouse SET ytd=ytd+? WHERE w=?", (amount, w))
            db.execute("UPDATE district SET ytd=ytd+? WHERE w=? AND d=?", (amount, w, d))
            db.execute("UPDATE customer SET balance=balance-? WHERE w=? AND d=? AND c=?", (amount, w, d, c))
            db.execute("INSERT INTO history VALUES (?,?,?,?,?)", (w, d, c, amount, time.time()))
        elif kind < 0.92:
            db.execute("SELECT * FROM orders WHERE w=? AND d=? AND c=? ORDER BY o DESC LIMIT 1", (w, d, c)).fetchall()
        elif kind < 0.96:
            for d2 in range(D):
                row = db.execute("SELECT o FROM new_order WHERE w=? AND d=? ORDER BY o LIMIT 1", (w, d2)).fetchone()
                if row:
                    db.execute("DELETE FROM new_order WHERE w=? AND d=? AND o=?", (w, d2, row[0]))
                    db.execute("UPDATE orders SET carrier=? WHERE w=? AND d=? AND o=?", (rng.randint(1, 10), w, d2, row[0]))
        else:
            db.execute("SELECT count(*) FROM stock WHERE w=? AND qty < 20", (w,)).fetchall()
        db.commit()
        done += 1
    return done


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    db = sqlite3.connect(args.path, isolation_level="DEFERRED")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    load(db)
    print(f"sqlite: {run(db, args.seconds)} transactions")
    db.close()


if __name__ == "__main__":
    main()
