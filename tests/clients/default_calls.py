"""Client calls that leave every optional argument to its default.

clients/typescript/test/defaults.test.ts runs this module against a scripted gRPC server, makes
the same calls with the TypeScript client, and checks that both sent the same requests: the
clients agree on every default (and both take them from proto/nachbar/v1/defaults.json).

Run: python -m tests.clients.default_calls ADDRESS (one server answering both services)
"""

from __future__ import annotations

import sys

from nachbar.client import AIClient, DBClient


def run(address: str) -> None:
    with AIClient(address) as ai:
        ai.create_store("t", query_model="q")
        ai.drop_store("t")
        ai.upsert("t", ["hello"])
        ai.get_sim_n("t", "a dog", 3)
        ai.get_key("t", ["a"])
        ai.get_by_predicate("t")
        ai.delete_keys("t", ["a"])
        ai.embed("m", ["x"])
        ai.rerank("ce", "q", ["a", "b"])
        ai.list_adapters("t")
        ai.drop_adapter("t", "v1")
        ai.drop_rescorer("t", "r1")
    with DBClient(address) as db:
        db.create_store("s", 3)
        db.drop_store("s")
        db.upsert("s", [("a", [1.0, 0.0, 0.5])])
        db.get_key("s", ["a"])
        db.get_by_predicate("s")
        db.get_sim_n("s", [1.0, 0.0, 0.0], 3)
        db.delete_keys("s", ["a"])
        db.drop_pred_index("s", ["n"])


if __name__ == "__main__":
    run(sys.argv[1])
