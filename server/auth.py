"""API keys with roles and store scopes.

A keys file is JSON that holds, per key, only its SHA-256 hash (never the key), an id, a role
and optional store-name globs:

    {"format": 1, "keys": [{"id": "k-3f9a1c2e", "role": "read", "stores": ["docs-*"],
                            "sha256": "<hex>", "created": "2026-12-07T10:00:00+00:00"}]}

Keys are 256-bit random tokens, so a plain SHA-256 is enough: there is nothing to brute-force,
and a slow password hash would cost every request. Verification compares the hash of the
presented key with every stored hash by `hmac.compare_digest`, without stopping at a match.

Roles nest: `read` (searches, gets, lists, Info, Embed, Rerank), `write` (read + upserts and
deletes), `admin` (write + create/drop stores and predicate indexes). A key with store globs may
only touch stores whose name matches one of them; without globs it reaches every store.

`KeyRing` rereads the file when its modification time, size or inode changes (looking at most
every quarter second), so revoking or adding a key needs no restart; a file that fails to parse
then keeps the previous keys (logged).
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import fnmatch
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger("nachbar.auth")

FORMAT = 1
KEY_PREFIX = "nbk_"
KEY_ID_PREFIX = "k-"


class Role(enum.IntEnum):
    """Ordered: a role may do everything the roles below it may."""

    READ = 1
    WRITE = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @staticmethod
    def parse(raw: str) -> Role:
        try:
            return Role[raw.strip().upper()]
        except KeyError:
            raise KeyFileError(f"unknown role {raw!r}; use read, write or admin") from None


class KeyFileError(Exception):
    """The keys file cannot be read or is malformed."""


class UnauthenticatedError(Exception):
    """No key, or a key this server does not know."""


class PermissionDeniedError(Exception):
    """A known key that may not do what the request asks."""


@dataclass(frozen=True)
class ApiKey:
    id: str
    role: Role
    stores: tuple[str, ...]  # name globs; empty: every store
    digest: bytes  # SHA-256 of the key
    created: str = ""

    def allows_store(self, store: str) -> bool:
        return not self.stores or any(fnmatch.fnmatchcase(store, g) for g in self.stores)

    @property
    def scope_label(self) -> str:
        return ", ".join(self.stores) if self.stores else "*"

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"id": self.id, "role": self.role.label}
        if self.stores:
            out["stores"] = list(self.stores)
        out["sha256"] = self.digest.hex()
        if self.created:
            out["created"] = self.created
        return out


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def _parse_entry(raw: object, where: str) -> ApiKey:
    if not isinstance(raw, dict):
        raise KeyFileError(f"{where}: expected an object")
    key_id = raw.get("id")
    digest_hex = raw.get("sha256")
    stores = raw.get("stores", [])
    if not isinstance(key_id, str) or not key_id:
        raise KeyFileError(f"{where}: missing id")
    if not isinstance(digest_hex, str) or len(digest_hex) != 64:
        raise KeyFileError(f"{where} ({key_id}): sha256 must be 64 hex digits")
    try:
        digest = bytes.fromhex(digest_hex)
    except ValueError:
        raise KeyFileError(f"{where} ({key_id}): sha256 is not hex") from None
    if not isinstance(stores, list) or not all(isinstance(s, str) and s for s in stores):
        raise KeyFileError(f"{where} ({key_id}): stores must be a list of non-empty globs")
    try:
        role = Role.parse(str(raw.get("role", "")))
    except KeyFileError as error:
        raise KeyFileError(f"{where} ({key_id}): {error}") from None
    return ApiKey(
        id=key_id,
        role=role,
        stores=tuple(stores),
        digest=digest,
        created=str(raw.get("created", "")),
    )


def load_keys(path: Path) -> tuple[ApiKey, ...]:
    """Every key in `path`; KeyFileError says what is wrong and where."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyFileError(
            f"keys file {path} does not exist; create a key with "
            f"`nachbar keys create --keys-file {path} --role admin`"
        ) from None
    except OSError as error:
        raise KeyFileError(f"cannot read keys file {path}: {error.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise KeyFileError(f"keys file {path} is not valid JSON ({error})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise KeyFileError(f"keys file {path}: expected {{'format': {FORMAT}, 'keys': [...]}}")
    entries = data.get("keys", [])
    if not isinstance(entries, list):
        raise KeyFileError(f"keys file {path}: 'keys' must be a list")
    keys = tuple(_parse_entry(e, f"keys file {path}, key {i}") for i, e in enumerate(entries))
    ids = [k.id for k in keys]
    if len(set(ids)) != len(ids):
        raise KeyFileError(f"keys file {path}: key ids are not unique")
    return keys


def save_keys(path: Path, keys: Sequence[ApiKey]) -> None:
    """Atomically replace `path` (mode 0600: hashes are not secrets, but nobody else's to see)."""
    payload = json.dumps({"format": FORMAT, "keys": [k.to_json() for k in keys]}, indent=2)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(payload + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Serialize read-modify-write of a keys file between `nachbar keys` processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def create_key(path: Path, role: Role, stores: Sequence[str] = ()) -> tuple[ApiKey, str]:
    """Add a new key to `path` (created if missing); returns its record and the key itself."""
    for glob in stores:
        if not glob:
            raise KeyFileError("store globs must not be empty")
    with locked(path):
        keys = load_keys(path) if path.exists() else ()
        taken = {k.id for k in keys}
        key_id = KEY_ID_PREFIX + secrets.token_hex(4)
        while key_id in taken:
            key_id = KEY_ID_PREFIX + secrets.token_hex(4)
        secret = new_key()
        record = ApiKey(
            id=key_id,
            role=role,
            stores=tuple(stores),
            digest=hash_key(secret),
            created=datetime.now(UTC).replace(microsecond=0).isoformat(),
        )
        save_keys(path, [*keys, record])
    return record, secret


def revoke_key(path: Path, key_id: str) -> ApiKey:
    with locked(path):
        keys = load_keys(path)
        kept = [k for k in keys if k.id != key_id]
        if len(kept) == len(keys):
            known = ", ".join(k.id for k in keys) or "none"
            raise KeyFileError(f"no key {key_id!r} in {path} (ids: {known})")
        save_keys(path, kept)
    return next(k for k in keys if k.id == key_id)


class KeyRing:
    """The keys of one file, reloaded when the file changes. Thread-safe.

    The file is looked at (one stat) at most every `check_seconds`: a stat costs more than the
    rest of a key check, and a quarter second is soon enough for a revocation."""

    def __init__(self, path: Path, *, check_seconds: float = 0.25) -> None:
        self.path = path
        self._path = os.fspath(path)
        self._check_seconds = check_seconds
        self._next_check = time.monotonic() + check_seconds
        self._lock = threading.Lock()
        self._stamp = self._file_stamp()
        self._keys = load_keys(path)  # a bad file at start stops the server

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def keys(self) -> tuple[ApiKey, ...]:
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self._check_seconds
            stamp = self._file_stamp()
            if stamp != self._stamp:
                with self._lock:
                    if stamp != self._stamp:
                        self._reload(stamp)
        return self._keys

    def _reload(self, stamp: tuple[int, int, int] | None) -> None:
        self._stamp = stamp
        try:
            keys = load_keys(self.path)
        except KeyFileError as error:
            log.error("keeping the previous %d API keys: %s", len(self._keys), error)
            return
        self._keys = keys
        log.info("reloaded %d API keys from %s", len(keys), self.path)

    def authenticate(self, presented: str | None) -> ApiKey:
        if not presented:
            raise UnauthenticatedError(
                "this server requires an API key: send the metadata `authorization: Bearer "
                "<key>` (clients: api_key=..., CLI: --api-key or NACHBAR_API_KEY)"
            )
        digest = hash_key(presented)
        found: ApiKey | None = None
        for key in self.keys():
            # No early exit: the time taken does not depend on which key matched.
            if hmac.compare_digest(digest, key.digest):
                found = key
        if found is None:
            raise UnauthenticatedError(
                "the API key is not valid on this server (unknown or revoked); "
                "ask an admin for a key (`nachbar keys create`)"
            )
        return found


def bearer_token(value: str | None) -> str | None:
    """The key from an `authorization` metadata value ("Bearer <key>")."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


# What each RPC needs, by method name; the same names mean the same thing on both services.
# A method missing here needs admin (fail closed); tests check that every RPC is listed.
METHOD_ROLES: dict[str, Role] = {
    "CreateStore": Role.ADMIN,
    "DropStore": Role.ADMIN,
    "CreatePredIndex": Role.ADMIN,
    "DropPredIndex": Role.ADMIN,
    "CreateKeywordIndex": Role.ADMIN,
    "DropKeywordIndex": Role.ADMIN,
    "Upsert": Role.WRITE,
    "DeleteKeys": Role.WRITE,
    "DeleteByPredicate": Role.WRITE,
    "ListStores": Role.READ,
    "GetStore": Role.READ,
    "GetKey": Role.READ,
    "GetByPredicate": Role.READ,
    "GetSimN": Role.READ,
    "Embed": Role.READ,
    "Rerank": Role.READ,
    "ListModels": Role.READ,
    "Info": Role.READ,
    "Ping": Role.READ,
    "ServerReflectionInfo": Role.READ,
    # Adapters and re-scorers: trained and dropped like data written to the store.
    "TrainAdapter": Role.WRITE,
    "DropAdapter": Role.WRITE,
    "TrainRescorer": Role.WRITE,
    "DropRescorer": Role.WRITE,
    "GetAdapter": Role.READ,
    "ListAdapters": Role.READ,
    "GetRescorer": Role.READ,
    "ListRescorers": Role.READ,
}
# Orchestrators probe health without credentials.
OPEN_SERVICES = frozenset({"grpc.health.v1.Health"})


def required_role(method: str) -> Role:
    return METHOD_ROLES.get(method, Role.ADMIN)


def authorize(key: ApiKey, method: str, role: Role, store: str | None) -> None:
    """PermissionDeniedError naming what was refused and why; `store` None: no store named."""
    if key.role < role:
        raise PermissionDeniedError(
            f"API key {key.id} has role {key.role.label}; {method} needs {role.label}. "
            "Use a key with that role (`nachbar keys create --role ...`)"
        )
    if store is not None and not key.allows_store(store):
        raise PermissionDeniedError(
            f"API key {key.id} may only reach stores matching {key.scope_label}, not "
            f"{store!r} ({method}). Use a key whose --stores cover it"
        )
