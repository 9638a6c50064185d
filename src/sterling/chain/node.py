"""Chains Sterling can run on: an embedded EVM, a local anvil node, any RPC URL.

A `Chain` is a connected `Web3` plus the things tests and the demo need
beside it: funded development accounts, a shared `Transactor`, time travel and
snapshots (on chains that support them), and `close()`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.providers.rpc import HTTPProvider

from sterling.chain.tx import GasPolicy, Transactor
from sterling.errors import ChainUnavailable, UsageError

#: anvil's development accounts come from this well-known test mnemonic.
ANVIL_MNEMONIC = "test test test test test test test test test test test junk"
ANVIL_ACCOUNTS = 10


@dataclass
class Chain:
    """A connected chain. `kind` is ``embedded``, ``anvil`` or ``rpc``."""

    kind: str
    w3: Web3
    chain_id: int
    rpc_url: str | None
    dev_accounts: list[LocalAccount]
    transactor: Transactor
    _node: AnvilNode | None = field(default=None, repr=False)

    # ---- time and snapshots (embedded and anvil only)

    def now(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def next_block_time(self) -> int:
        """The time the next block would carry: the latest block's may be old when nothing was mined.

        On anvil the pending block follows the clock, offset included when time was moved on (the
        registry's delay on a development chain), which wall time alone would not know.
        """
        latest = self.now()
        try:
            pending = int(self.w3.eth.get_block("pending")["timestamp"])
        except (ValueError, KeyError, TypeError):  # a node without a pending block
            return latest
        return max(latest, pending)

    def advance_time(self, seconds: int) -> None:
        """Move chain time forward and mine a block."""
        if self.kind == "embedded":
            tester = self.w3.provider.ethereum_tester  # type: ignore[attr-defined]
            tester.time_travel(self.now() + seconds)
            tester.mine_blocks(1)
        elif self.kind == "anvil":
            self.w3.provider.make_request("evm_increaseTime", [seconds])  # type: ignore[arg-type]
            self.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
        else:
            raise UsageError("time travel needs an embedded or anvil chain")

    def snapshot(self) -> Any:
        if self.kind == "embedded":
            return self.w3.provider.ethereum_tester.take_snapshot()  # type: ignore[attr-defined]
        if self.kind == "anvil":
            return self.w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]
        raise UsageError("snapshots need an embedded or anvil chain")

    def revert(self, snapshot_id: Any) -> None:
        if self.kind == "embedded":
            self.w3.provider.ethereum_tester.revert_to_snapshot(snapshot_id)  # type: ignore[attr-defined]
        elif self.kind == "anvil":
            self.w3.provider.make_request("evm_revert", [snapshot_id])  # type: ignore[arg-type]
        else:
            raise UsageError("snapshots need an embedded or anvil chain")
        self.transactor.reset()

    def fund(self, address: str, wei: int) -> None:
        """Send `wei` from the first development account."""
        self.transactor.send(
            self.dev_accounts[0], to=address, data=b"", value=wei, function="fund", gas=21_000
        )

    def close(self) -> None:
        if self._node is not None:
            self._node.stop()
            self._node = None


def _web3_for(provider: Any) -> Web3:
    # An explicit, empty middleware list: Sterling signs locally and needs none.
    return Web3(provider, middleware=[])


def embedded() -> Chain:
    """An in-process EVM (py-evm through eth-tester). Nothing leaves the process."""
    from eth_tester import EthereumTester, PyEVMBackend
    from web3 import EthereumTesterProvider

    class LockedProvider(EthereumTesterProvider):
        """py-evm is not thread-safe; a worker thread and the main thread may share one chain."""

        _lock = threading.RLock()

        def make_request(self, method: Any, params: Any) -> Any:
            with self._lock:
                return super().make_request(method, params)

    backend = PyEVMBackend()
    tester = EthereumTester(backend)
    w3 = _web3_for(LockedProvider(tester))
    chain_id = int(w3.eth.chain_id)
    accounts = [Account.from_key(k.to_bytes()) for k in backend.account_keys]
    return Chain(
        kind="embedded",
        w3=w3,
        chain_id=chain_id,
        rpc_url=None,
        dev_accounts=accounts,
        transactor=Transactor(w3, chain_id=chain_id, poll_latency=0.0),
    )


def anvil_dev_accounts(count: int = ANVIL_ACCOUNTS) -> list[LocalAccount]:
    Account.enable_unaudited_hdwallet_features()
    return [Account.from_mnemonic(ANVIL_MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}") for i in range(count)]


def connect(rpc_url: str, *, dev_accounts: list[LocalAccount] | None = None, timeout: float = 10.0) -> Chain:
    """Connect to any EVM JSON-RPC URL. Anvil is recognised and gets its dev accounts."""
    if not rpc_url.startswith(("http://", "https://")):
        raise UsageError(f"--rpc-url must be an http(s) URL, got {rpc_url!r}")
    w3 = _web3_for(HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))
    try:
        chain_id = int(w3.eth.chain_id)
        client = str(w3.provider.make_request("web3_clientVersion", []).get("result", ""))  # type: ignore[arg-type]
    except Exception as exc:  # any transport failure means "unreachable"
        raise ChainUnavailable(f"no EVM node answers at {rpc_url} ({_root_cause(exc)})") from exc
    is_anvil = client.lower().startswith("anvil")
    if dev_accounts is None:
        dev_accounts = anvil_dev_accounts() if is_anvil else []
    gas = GasPolicy(mode="fixed") if is_anvil else GasPolicy(mode="estimate")
    return Chain(
        kind="anvil" if is_anvil else "rpc",
        w3=w3,
        chain_id=chain_id,
        rpc_url=rpc_url,
        dev_accounts=dev_accounts,
        transactor=Transactor(w3, chain_id=chain_id, gas=gas),
    )


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    text = str(exc)
    return text.rsplit("] ", 1)[-1][:120] if text else type(exc).__name__


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class AnvilNode:
    """An anvil process on loopback, optionally persisting its state to a folder.

    With `state_dir`, anvil loads ``anvil-state.json`` from it at start and
    writes it back every `state_interval` seconds (anvil's minimum is 1) and on
    a clean stop, so a restart loses nothing that was written before the last
    save. A hard kill of anvil itself loses what was mined since that save; on
    Linux anvil is also stopped cleanly (and saves) when the process that
    started it dies, so it never outlives `sterling chain up`.
    """

    def __init__(
        self,
        binary: Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        state_dir: Path | None = None,
        state_interval: int = 1,
        chain_id: int = 31337,
        block_time: float | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.binary = binary
        self.host = host
        self.port = port or free_port(host)
        self.state_dir = state_dir
        self.state_interval = state_interval
        self.chain_id = chain_id
        self.block_time = block_time
        #: More anvil options (e.g. a benchmark's ``--no-mining``, ``--disable-block-gas-limit``).
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def rpc_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def state_file(self) -> Path | None:
        return self.state_dir / "anvil-state.json" if self.state_dir else None

    def start(self, timeout: float = 20.0) -> None:
        args = [
            str(self.binary),
            "--host", self.host,
            "--port", str(self.port),
            "--chain-id", str(self.chain_id),
            "--accounts", str(ANVIL_ACCOUNTS),
            "--silent",
        ]  # fmt: skip
        if self.block_time:
            args += ["--block-time", str(self.block_time)]
        args += list(self.extra_args)
        log_path = os.devnull
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            args += ["--state", str(self.state_file), "--state-interval", str(self.state_interval)]
            log_path = str(self.state_dir / "anvil.log")
        try:
            with open(log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    args,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=_stop_with_parent(),
                )
        except OSError as exc:
            raise ChainUnavailable(f"could not start anvil ({self.binary}): {exc}") from exc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ChainUnavailable(
                    f"anvil exited with code {self.proc.returncode} at start (port {self.port} taken?)"
                )
            if self._answers():
                self._keep_time_monotonic()
                return
            time.sleep(0.05)
        self.stop()
        raise ChainUnavailable(f"anvil did not answer on {self.rpc_url} within {timeout:.0f} s")

    def _rpc(self, method: str, params: list[Any]) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
        req = urllib.request.Request(self.rpc_url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())["result"]

    def _keep_time_monotonic(self) -> None:
        """After loading a state, never let the clock go back behind its latest block.

        anvil keeps blocks but not the clock's offset: a chain whose time was moved on (the
        registry's two-day delay on a development chain) restarts at wall time, before its own
        last block, and every deadline and effective time on it would move back with it.
        """
        latest = int(self._rpc("eth_getBlockByNumber", ["latest", False])["timestamp"], 16)
        if latest >= int(time.time()):
            self._rpc("evm_setTime", [latest + 1])

    def _answers(self) -> bool:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}).encode()
        req = urllib.request.Request(self.rpc_url, body, {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=0.5) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Stop anvil cleanly (it saves its state on SIGTERM), then forcefully.

        The npm launcher exits at once on SIGTERM while the anvil binary it started is still
        saving, so this waits for the whole process group: a restart then reads a complete file.
        """
        if self.proc is None:
            return
        group = self.proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        try:
            self.proc.wait(timeout)  # reaped first: a zombie leader would keep the group alive
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
            self.proc.wait(timeout)
        if not _group_gone(group, timeout):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
            _group_gone(group, timeout)
        self.proc = None

    def kill(self) -> None:
        """Kill anvil without letting it save (for fault tests)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            _group_gone(self.proc.pid, 10.0)
        self.proc = None


#: prctl(2) option: the signal the kernel sends a process when its parent dies.
_PR_SET_PDEATHSIG = 1


def _stop_with_parent() -> Callable[[], None] | None:
    """On Linux, a function for the child to run before exec: the kernel SIGTERMs it (anvil then
    saves and exits) when the thread that started it dies. Resolved here, not after fork."""
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _group_gone(group: int, timeout: float) -> bool:
    """Wait until no process of process group `group` is left; False if some still are at `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # the group id was reused by someone else's processes
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def start_anvil(binary: Path, **kwargs: Any) -> Chain:
    """Start an anvil node and connect to it; `Chain.close()` stops it."""
    node = AnvilNode(binary, **kwargs)
    node.start()
    try:
        chain = connect(node.rpc_url)
    except Exception:
        node.stop()
        raise
    chain._node = node
    return chain
