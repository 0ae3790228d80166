"""A private Redis Cluster for tests: 6 ``redis-server --cluster-enabled yes`` processes (3 masters,
3 replicas) made one cluster by ``redis-cli --cluster create``, and what fault tests do to it:
SIGKILL a master, ``CLUSTER FAILOVER`` on a replica, migrate a slot with its keys while it is used.

Every node listens on a free port with its cluster bus on another free port (``cluster-port``),
keeps nothing on disk, and is killed at teardown.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Set

import pytest
import redis

from sentri.redis_slots import key_slot

from .services import Pausable, free_ports, wait_for_port

NODE_TIMEOUT_MS = 1000  # how long a silent master is given before its replica takes over
SETTLE_TIMEOUT_S = 30.0


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = SETTLE_TIMEOUT_S) -> Any:
    """Block until ``condition()`` is truthy (a cluster's state has no event to wait on)."""
    deadline = time.monotonic() + timeout_s
    last_error: Optional[BaseException] = None
    while time.monotonic() < deadline:
        try:
            result = condition()
        except redis.RedisError as error:  # a node still settling
            last_error = error
            result = None
        if result:
            return result
        time.sleep(0.05)
    raise TimeoutError(f"{what} not reached after {timeout_s}s (last error: {last_error!r})")


class ClusterNode(Pausable):  # paused: it stops answering (a replica cannot take over)
    def __init__(self, folder: str, ports: Set[int]) -> None:
        self.folder = folder
        # Every port the cluster uses (main and bus, all nodes): a node's port must be none of
        # the others' (CI once gave a node the port another node's bus had just taken: the node
        # died, the bus answered its port, and "redis-cli --cluster create" failed).
        self.cluster_ports = ports
        self.port, self.bus_port = free_ports(2, avoid=ports)
        ports.update((self.port, self.bus_port))
        self.process: Optional[subprocess.Popen] = None  # type: ignore[type-arg]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start on the chosen ports; a port taken meanwhile (free_port can race) means new ones."""
        for attempt in range(5):
            try:
                self._start()
                return
            except RuntimeError:  # exited before listening: a port was taken since it was chosen
                if attempt == 4:
                    raise
                self.port, self.bus_port = free_ports(2, avoid=self.cluster_ports)
                self.cluster_ports.update((self.port, self.bus_port))

    def _start(self) -> None:
        os.makedirs(self.folder, exist_ok=True)
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", self.folder, "--cluster-enabled", "yes", "--cluster-port", str(self.bus_port),
                "--cluster-config-file", f"nodes-{self.port}.conf", "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                # A replica takes over however long ago it last heard its master (an idle test
                # cluster's replicas hear it every repl-ping-replica-period only).
                "--cluster-replica-validity-factor", "0", "--repl-ping-replica-period", "1",
                "--repl-diskless-sync-delay", "0"]
        with open(os.path.join(self.folder, "redis.log"), "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, process=self.process)
        try:  # this node answers there, not something else that took the port meanwhile
            self.command("PING")
        except redis.RedisError:
            self.stop()
            raise RuntimeError(f"no redis of this node on port {self.port}") from None
        if not self.alive:
            raise RuntimeError(f"the node on port {self.port} exited")

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def client(self) -> redis.Redis:  # type: ignore[type-arg]
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def command(self, *args: Any) -> Any:
        with self.client() as client:
            return client.execute_command(*args)

    def node_id(self) -> str:
        return str(self.command("CLUSTER", "MYID").decode())

    def info(self) -> Dict[str, str]:
        text = self.command("CLUSTER", "INFO").decode()
        return dict(line.split(":", 1) for line in text.split("\r\n") if ":" in line)

    def replication(self) -> Dict[str, Any]:
        with self.client() as client:
            return dict(client.info("replication"))

    def role(self) -> str:
        return str(self.command("ROLE")[0].decode())

    def kill(self) -> None:
        if self.alive:
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a paused node cannot die
            self.process.kill()
            self.process.wait(10)
        self.process = None


class RedisCluster:
    """Six nodes made one cluster; ``url`` names one node, ``seeds`` all of them."""

    def __init__(self, folder: str) -> None:
        ports: Set[int] = set()
        self.nodes = [ClusterNode(os.path.join(folder, f"node{number}"), ports) for number in range(6)]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def seeds(self, *numbers: int) -> str:
        chosen = numbers or tuple(range(len(self.nodes)))
        return ",".join(self.nodes[number].url for number in chosen)

    def start(self) -> RedisCluster:
        for node in self.nodes:
            node.start()
        created = subprocess.run(["redis-cli", "--cluster", "create", *(node.address for node in self.nodes),
                                  "--cluster-replicas", "1", "--cluster-yes"],
                                 capture_output=True, text=True, timeout=60)
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-2000:]} {created.stderr[-1000:]}")
        self.wait_settled()
        # Every replica has its master's data (its first sync done): a master killed later loses
        # only what it had not sent yet, not everything written since the cluster was made.
        wait_for(lambda: all(node.replication().get("master_link_status") == "up"
                             for node in self.alive() if node.role() == "slave"), "replicas in sync")
        # ... and every node's slot map lists each master's replica (a publisher asks whether its
        # master has one before it waits for its confirmation: sentri.redis_slots).
        wait_for(lambda: all(len(row) > 3 for node in self.alive() for row in node.command("CLUSTER", "SLOTS")),
                 "replicas in every node's slot map")
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def alive(self) -> List[ClusterNode]:
        return [node for node in self.nodes if node.alive]

    def wait_settled(self, timeout_s: float = SETTLE_TIMEOUT_S) -> None:
        """Every live node says ``cluster_state:ok`` and they agree on every slot's master."""
        def settled() -> bool:
            nodes = self.alive()
            if any(node.info().get("cluster_state") != "ok" for node in nodes):
                return False
            maps = [self._slot_owners(node) for node in nodes]
            return all(found == maps[0] for found in maps) and len(maps[0]) == 16384
        wait_for(settled, "a settled cluster", timeout_s)

    @staticmethod
    def _slot_owners(node: ClusterNode) -> Dict[int, int]:
        owners: Dict[int, int] = {}
        for row in node.command("CLUSTER", "SLOTS"):
            for slot in range(int(row[0]), int(row[1]) + 1):
                owners[slot] = int(row[2][1])
        return owners

    def node_at(self, port: int) -> ClusterNode:
        return next(node for node in self.nodes if node.port == port)

    def master_of(self, name: str) -> ClusterNode:
        """The master serving ``name``'s slot (a key or a sharded channel), as a live node sees it."""
        slot = key_slot(name)
        owner = self._slot_owners(self.alive()[0]).get(slot)
        if owner is None:  # mid-failover, that node's map has the slot in no range yet: ask again
            raise redis.exceptions.ClusterDownError(f"slot {slot} has no master in this node's view")
        return self.node_at(owner)

    def replica_of(self, master: ClusterNode) -> ClusterNode:
        master_id = master.node_id()
        for node in self.alive():
            if node is not master and node.role() == "slave":
                replicated = node.command("CLUSTER", "NODES").decode()
                mine = next(line for line in replicated.splitlines() if "myself" in line)
                if mine.split()[3] == master_id:
                    return node
        raise LookupError(f"no replica of {master.address}")

    def masters(self) -> List[ClusterNode]:
        return [node for node in self.alive() if node.role() == "master"]

    # -- faults --------------------------------------------------------------------------------

    def kill_master_of(self, name: str) -> ClusterNode:
        """SIGKILL the master of ``name``'s slot; returns the replica that will take over."""
        master = self.master_of(name)
        replica = self.replica_of(master)
        master.kill()
        return replica

    def wait_promoted(self, replica: ClusterNode) -> None:
        wait_for(lambda: replica.role() == "master", f"{replica.address} promoted")
        self.wait_settled()

    def manual_failover(self, name: str) -> ClusterNode:
        """``CLUSTER FAILOVER`` on the replica of ``name``'s master; returns it once it is master."""
        replica = self.replica_of(self.master_of(name))
        replica.command("CLUSTER", "FAILOVER")
        self.wait_promoted(replica)
        return replica

    def migrate_slot(self, name: str, between_batches: Callable[[], None] = lambda: None) -> ClusterNode:
        """Move ``name``'s slot, keys included, to another master while it is in use; returns the new owner.

        The steps of ``redis-cli --cluster reshard``: IMPORTING on the target, MIGRATING on the
        source, ``MIGRATE ... KEYS`` in batches, then ``SETSLOT NODE`` on the target, the source
        and every other master.
        """
        slot = key_slot(name)
        source = self.master_of(name)
        target = next(node for node in self.masters() if node is not source)
        source_id, target_id = source.node_id(), target.node_id()
        target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while True:
            keys = source.command("CLUSTER", "GETKEYSINSLOT", slot, 100)
            if not keys:
                break
            source.command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
            between_batches()
        target.command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        source.command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        for node in self.masters():
            if node is not source and node is not target:
                node.command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        self.wait_settled()
        return target

    # -- pub/sub as seen by the nodes ----------------------------------------------------------

    def shard_subscribers(self, channel: str) -> int:
        """Sharded subscribers of ``channel`` on its master (``PUBSUB SHARDNUMSUB``)."""
        answer = self.master_of(channel).command("PUBSUB", "SHARDNUMSUB", channel)
        return int(answer[1])

    def classic_subscribers(self, channel: str) -> int:
        """Classic subscribers of ``channel`` over every live node (each node counts its own clients)."""
        return sum(int(node.command("PUBSUB", "NUMSUB", channel)[1]) for node in self.alive())


@contextlib.contextmanager
def running_cluster(folder: Any) -> Iterator[RedisCluster]:
    cluster = RedisCluster(str(folder))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """One cluster shared by a module's tests that leave it as they found it."""
    with running_cluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


@pytest.fixture
def redis_cluster_own(tmp_path: Any) -> Iterator[RedisCluster]:
    """A cluster of the test's own, for a test that kills, fails over or reshards it."""
    with running_cluster(tmp_path / "cluster") as cluster:
        yield cluster
