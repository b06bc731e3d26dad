"""API keys: the keys file, verification, the role table and reloading."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from nachbar.server import auth
from nachbar.server.auth import (
    KeyFileError,
    KeyRing,
    PermissionDeniedError,
    Role,
    UnauthenticatedError,
    authorize,
    bearer_token,
    create_key,
    load_keys,
    revoke_key,
)
from nachbar.v1 import ai_pb2, db_pb2


def test_the_file_holds_hashes_never_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    record, secret = create_key(path, Role.WRITE, ["docs-*"])
    text = path.read_text()
    assert secret not in text
    assert secret.startswith("nbk_") and len(secret) >= 40
    entry = json.loads(text)["keys"][0]
    assert entry == {
        "id": record.id,
        "role": "write",
        "stores": ["docs-*"],
        "sha256": auth.hash_key(secret).hex(),
        "created": record.created,
    }
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_keys_are_random_and_ids_unique(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    made = [create_key(path, Role.READ) for _ in range(20)]
    assert len({secret for _, secret in made}) == 20
    assert len({record.id for record, _ in made}) == 20
    assert [k.id for k in load_keys(path)] == [record.id for record, _ in made]


def test_authenticate_finds_the_key_and_refuses_others(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    reader, read_secret = create_key(path, Role.READ)
    admin, admin_secret = create_key(path, Role.ADMIN)
    ring = KeyRing(path)
    assert ring.authenticate(read_secret) == reader
    assert ring.authenticate(admin_secret) == admin
    with pytest.raises(UnauthenticatedError, match="requires an API key"):
        ring.authenticate(None)
    with pytest.raises(UnauthenticatedError, match="not valid") as refused:
        ring.authenticate(read_secret + "x")
    assert read_secret not in str(refused.value)


def test_revocation_and_new_keys_apply_without_restart(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    first, first_secret = create_key(path, Role.READ)
    ring = KeyRing(path, check_seconds=0)
    assert ring.authenticate(first_secret).id == first.id
    _, second_secret = create_key(path, Role.WRITE)
    assert ring.authenticate(second_secret).role is Role.WRITE
    revoke_key(path, first.id)
    with pytest.raises(UnauthenticatedError):
        ring.authenticate(first_secret)


def test_a_broken_edit_keeps_the_previous_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    _, secret = create_key(path, Role.READ)
    ring = KeyRing(path, check_seconds=0)
    time.sleep(0.01)
    path.write_text("{ not json")
    assert ring.authenticate(secret).role is Role.READ


def test_a_bad_file_is_refused_with_its_reason(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    with pytest.raises(KeyFileError, match="does not exist.*nachbar keys create"):
        KeyRing(path)
    path.write_text(json.dumps({"format": 1, "keys": [{"id": "a", "role": "boss"}]}))
    with pytest.raises(KeyFileError, match="sha256"):
        load_keys(path)
    path.write_text(
        json.dumps({"format": 1, "keys": [{"id": "a", "role": "boss", "sha256": "0" * 64}]})
    )
    with pytest.raises(KeyFileError, match="key 0 \\(a\\): unknown role 'boss'"):
        load_keys(path)
    path.unlink()
    create_key(path, Role.READ)
    with pytest.raises(KeyFileError, match="no key 'k-nope'"):
        revoke_key(path, "k-nope")


def test_roles_nest_and_scopes_are_globs(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    writer, _ = create_key(path, Role.WRITE, ["team-*", "shared"])
    authorize(writer, "Upsert", Role.WRITE, "team-a")
    authorize(writer, "GetSimN", Role.READ, "shared")
    authorize(writer, "Embed", Role.READ, None)
    with pytest.raises(PermissionDeniedError, match=f"{writer.id} has role write; DropStore"):
        authorize(writer, "DropStore", Role.ADMIN, "team-a")
    with pytest.raises(PermissionDeniedError, match="team-\\*, shared, not 'other'"):
        authorize(writer, "GetSimN", Role.READ, "other")


def test_bearer_metadata() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer ") is None
    assert bearer_token(None) is None


def test_every_rpc_of_both_services_has_a_role() -> None:
    methods = {
        method.name
        for module in (db_pb2, ai_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert methods - set(auth.METHOD_ROLES) == set()
    writes = {"Upsert", "DeleteKeys", "DeleteByPredicate"}
    writes |= {"TrainAdapter", "DropAdapter", "TrainRescorer", "DropRescorer"}
    admin = {
        "CreateStore",
        "DropStore",
        "CreatePredIndex",
        "DropPredIndex",
        "CreateKeywordIndex",
        "DropKeywordIndex",
    }
    for name in methods:
        expected = Role.ADMIN if name in admin else Role.WRITE if name in writes else Role.READ
        assert auth.required_role(name) is expected, name
    assert auth.required_role("SomethingNew") is Role.ADMIN  # fail closed
