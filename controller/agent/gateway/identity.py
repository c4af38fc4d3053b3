"""Who is on the other end of a gateway connection: the kernel says, not the client.

`SO_PEERCRED` gives the UID and GID of the process that connected (fixed at
`connect()`, so handing the socket to another process changes nothing). The
UID's login comes from the host's user database (NSS, so LDAP and SSSD users
count; or the host's `passwd` and `group` files where the agent sees the host's
/etc mounted elsewhere, in a pod), its account from the account namespaces' `gpu.ds01.io/linux-user`
annotation. Admins are root and the members of one Linux group; they pass
through the gateway untouched. Everyone else without an account is still
served, under the default policy, as their login.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from controller.policy.docker.facts import Caller

_UCRED = struct.Struct("3i")


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int


def peer_of(sock: socket.socket) -> Peer:
    """The credentials the kernel recorded when the peer connected."""
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(data)
    return Peer(pid, uid, gid)


@dataclass(frozen=True)
class Accounts:
    """What the agent knows about accounts (from the apiserver, or its saved copy)."""

    by_login: Mapping[str, str]
    """Linux login -> account user."""
    groups: Mapping[str, tuple[str, ...]]
    """Account user -> groups."""


@dataclass(frozen=True)
class Identity:
    caller: Caller
    admin: bool
    home: str | None
    account: str | None
    groups: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """For messages and audit records."""
        return self.caller.owner


def _lines(path: Path) -> list[list[str]]:
    try:
        return [line.split(":") for line in path.read_text().splitlines() if line.strip()]
    except OSError:
        return []


def _groups(etc: Path) -> list[tuple[str, int, list[str]]]:
    """(name, gid, members) of each line of ``etc``/group."""
    return [
        (f[0], int(f[2]), [m for m in f[3].split(",") if m])
        for f in _lines(etc / "group")
        if len(f) >= 4 and f[2].isdigit()
    ]


def _login_from_files(etc: Path, uid: int, gid: int) -> _Login:
    for fields in _lines(etc / "passwd"):
        if len(fields) >= 7 and fields[2] == str(uid) and fields[3].isdigit():
            name, primary = fields[0], int(fields[3])
            member_of = {g for _, g, members in _groups(etc) if name in members}
            return _Login(name, primary, fields[5], frozenset({primary, *member_of}))
    return _Login(None, gid, None, frozenset({gid}))


@dataclass(frozen=True)
class _Login:
    login: str | None
    gid: int
    home: str | None
    gids: frozenset[int]


class Identities:
    """Maps peers to identities; Linux facts are cached for ``ttl`` seconds per UID."""

    def __init__(
        self,
        admin_group: str | None,
        accounts: Callable[[], Accounts],
        ttl: float = 30.0,
        host_etc: Path | None = None,
    ) -> None:
        self.admin_group = admin_group
        self.accounts = accounts
        self.ttl = ttl
        self.host_etc = host_etc
        """The host's /etc where this process does not run on the host (its own NSS
        would name the container's users): `passwd` and `group` are read there."""
        self._cache: dict[int, tuple[float, _Login]] = {}

    def _login(self, uid: int, gid: int) -> _Login:
        now = time.monotonic()
        cached = self._cache.get(uid)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        if self.host_etc is not None:
            found = _login_from_files(self.host_etc, uid, gid)
        else:
            try:
                entry = pwd.getpwuid(uid)
            except KeyError:
                found = _Login(None, gid, None, frozenset({gid}))
            else:
                gids = frozenset(os.getgrouplist(entry.pw_name, entry.pw_gid))
                found = _Login(entry.pw_name, entry.pw_gid, entry.pw_dir, gids)
        self._cache[uid] = (now, found)
        return found

    def _admin_gid(self) -> int | None:
        if not self.admin_group:
            return None
        if self.host_etc is not None:
            return next(
                (gid for name, gid, _ in _groups(self.host_etc) if name == self.admin_group), None
            )
        try:
            return grp.getgrnam(self.admin_group).gr_gid
        except KeyError:
            return None  # a group that does not exist has no members

    def resolve(self, peer: Peer) -> Identity:
        linux = self._login(peer.uid, peer.gid)
        admin_gid = self._admin_gid()
        admin = peer.uid == 0 or (admin_gid is not None and admin_gid in linux.gids)
        known = self.accounts()
        account = known.by_login.get(linux.login) if linux.login else None
        owner = account or linux.login or f"uid-{peer.uid}"
        caller = Caller(
            owner=owner, login=linux.login, uid=peer.uid, gid=linux.gid, gids=linux.gids
        )
        groups = known.groups.get(account, ()) if account else ()
        return Identity(caller, admin, linux.home, account, groups)
