"""The example app's schema migrations: ``python3 migrate.py init|expand|contract|status``.

Each step is idempotent (it checks the columns first), as Baton asks of expand and contract
commands: a control plane that died in the middle runs the step again.
"""

from __future__ import annotations

import sys

from db import columns, connect


def main(step: str) -> int:
    conn = connect()
    have = columns(conn)
    if step == "init":
        if not have:
            conn.execute(
                "CREATE TABLE items (id INTEGER PRIMARY KEY, title TEXT NOT NULL,"
                " legacy_flag INTEGER NOT NULL DEFAULT 0)"
            )
            for n in range(1, 4):
                conn.execute(f"INSERT INTO items (id, title) VALUES ({n}, 'item {n}')")
        print("created items(id, title, legacy_flag)" if not have else "items exists")
    elif step == "expand":
        if "price" not in have:
            conn.execute("ALTER TABLE items ADD COLUMN price INTEGER NOT NULL DEFAULT 0")
            print("expand: added items.price")
        else:
            print("expand: items.price is already there")
    elif step == "contract":
        if "legacy_flag" in have:
            conn.execute("ALTER TABLE items DROP COLUMN legacy_flag")
            print("contract: dropped items.legacy_flag")
        else:
            print("contract: items.legacy_flag is already gone")
    elif step == "status":
        print("items(" + ", ".join(have) + ")")
    else:
        print(f"unknown step {step!r}: init, expand, contract or status", file=sys.stderr)
        return 2
    if hasattr(conn, "commit"):
        conn.commit()
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "status"))
