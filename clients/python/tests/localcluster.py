"""Real Hourglass clusters for the tests: ``hourglass serve`` processes on loopback with free
ports and temporary data directories (as the Rust tests' ``tests/support`` starts them)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import hourglass

REPO = Path(__file__).resolve().parents[3]


def hourglass_bin() -> Path:
    """``$HOURGLASS_BIN``, else ``${CARGO_TARGET_DIR:-<repo>/target}/release/hourglass``."""
    explicit = os.environ.get("HOURGLASS_BIN")
    if explicit:
        return Path(explicit)
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    if not target.is_absolute():
        target = REPO / target
    return target / "release" / "hourglass"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Node:
    id: int
    address: str
    http: str
    dir: Path
    config: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class LocalCluster:
    """A cluster of ``hourglass serve`` processes. Use :meth:`start`, then :meth:`close`."""

    def __init__(self, nodes: int = 3, partitions: int = 4, extra_toml: str = "") -> None:
        self.binary = hourglass_bin()
        if not self.binary.exists():
            raise RuntimeError(
                f"{self.binary} is missing: build it with `cargo build --release -p hourglass` "
                "(or point HOURGLASS_BIN or CARGO_TARGET_DIR at it)"
            )
        self.root = Path(tempfile.mkdtemp(prefix="hourglass-py-"))
        self.partitions = partitions
        # Each node: its client port, its peer (Raft transport) port and its HTTP port.
        ports = [(free_port(), free_port(), free_port()) for _ in range(nodes)]
        peers = ", ".join(
            f'"{i + 1}=127.0.0.1:{g}/127.0.0.1:{p}"' for i, (g, p, _) in enumerate(ports)
        )
        self.nodes: list[Node] = []
        for i, (grpc_port, peer_port, http_port) in enumerate(ports):
            node_id = i + 1
            node_dir = self.root / f"node-{node_id}"
            node_dir.mkdir()
            config = self.root / f"node-{node_id}.toml"
            config.write_text(
                f'node_id = {node_id}\nlisten = "127.0.0.1:{grpc_port}"\n'
                f'peer_listen = "127.0.0.1:{peer_port}"\n'
                f'http_listen = "127.0.0.1:{http_port}"\ndata_dir = "{node_dir / "data"}"\n'
                f"peers = [{peers}]\npartitions = {partitions}\n"
                f"replication_factor = {min(nodes, 3)}\n{extra_toml}\n"
            )
            self.nodes.append(
                Node(
                    id=node_id,
                    address=f"127.0.0.1:{grpc_port}",
                    http=f"127.0.0.1:{http_port}",
                    dir=node_dir,
                    config=config,
                )
            )

    @property
    def endpoints(self) -> list[str]:
        return [n.address for n in self.nodes]

    def node(self, node_id: int) -> Node:
        return self.nodes[node_id - 1]

    def client(
        self,
        *node_ids: int,
        retry: hourglass.RetryPolicy | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> hourglass.Client:
        """A client of the given nodes (all when none given)."""
        ids = node_ids or tuple(n.id for n in self.nodes)
        return hourglass.Client([self.node(i).address for i in ids], retry=retry, metadata=metadata)

    def spawn(self, node_id: int) -> None:
        node = self.node(node_id)
        if node.running:
            return
        env = dict(os.environ, RUST_LOG="info,openraft=warn")
        with open(node.dir / "stderr.log", "ab") as log:
            node.process = subprocess.Popen(
                [str(self.binary), "serve", "--config", str(node.config)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
            )

    def stop(self, node_id: int, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Stops a node: SIGTERM (graceful) by default, SIGKILL on request or after timeout."""
        node = self.node(node_id)
        if node.process is None:
            return
        if node.process.poll() is None:
            node.process.send_signal(sig)
            try:
                node.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()
        node.process = None

    def stderr(self, node_id: int) -> str:
        path = self.node(node_id).dir / "stderr.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def start(self, within: float = 90.0) -> hourglass.ClusterStatus:
        for node in self.nodes:
            self.spawn(node.id)
        return await self.wait_ready(within)

    async def wait_ready(self, within: float = 90.0) -> hourglass.ClusterStatus:
        """Waits until every partition has a leader and a write goes through."""
        deadline = time.monotonic() + within
        last = "no answer yet"
        async with self.client(retry=hourglass.RetryPolicy(deadline=2.0)) as client:
            while True:
                for node in self.nodes:
                    if node.process is not None and node.process.poll() is not None:
                        raise RuntimeError(
                            f"node {node.id} exited with {node.process.returncode}:\n"
                            + self.stderr(node.id)[-3000:]
                        )
                try:
                    status = await client.cluster_status()
                    if all(p.leader for p in status.partitions):
                        # Leaders may still be settling: a committed write says the cluster
                        # takes traffic.
                        await client.schedule("readiness", "probe", delay=3600.0, timeout=10.0)
                        return status
                    last = f"leaders {[p.leader for p in status.partitions]}"
                except hourglass.HourglassError as error:
                    last = str(error)
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cluster not ready within {within} s: {last}")
                await asyncio.sleep(0.2)

    async def leader_address(self, partition: int) -> str:
        async with self.client() as client:
            status = await client.cluster_status()
        leader = status.leader_of(partition)
        if leader is None:
            raise RuntimeError(f"partition {partition} has no leader")
        return leader.address

    def close(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.kill()
                node.process.wait()
            node.process = None
        shutil.rmtree(self.root, ignore_errors=True)
