"""The contract sandbox, on real WebAssembly: host functions, limits, and every way a contract
can misbehave. After each failure a normal contract must still run in the same process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from sterling.enclave.sandbox import Limits, Sandbox, _execute
from sterling.errors import ContractError, UsageError

CONSUMER = Account.from_key("0x" + "22" * 32)


class FakeHost:
    """A test double of the outside world (the chain, the job); the sandbox itself is real."""

    def __init__(self, *, job: dict[str, Any] | None = None, listing: dict[str, Any] | None = None) -> None:
        self._job = job or {"id": 7, "name": "retinopathy"}
        self._listing = listing or {"id": 3, "price": 10}
        self.calls: list[tuple[str, str, list[Any]]] = []

    def job(self) -> dict[str, Any]:
        return self._job

    def listing(self) -> dict[str, Any]:
        return self._listing

    def chain_call(self, address: str, signature: str, args: list[Any]) -> Any:
        self.calls.append((address, signature, args))
        if signature.startswith("fails"):
            raise ValueError("execution reverted")
        return {"address": address, "signature": signature, "args": args}

    def recover(self, message: str, signature: str) -> str:
        address: str = Account.recover_message(encode_defunct(text=message), signature=signature)
        return address


NORMAL = "def check(request):\n    return {'accept': True, 'got': request}\n"


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox()


def src(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def assert_still_works(sandbox: Sandbox) -> None:
    assert sandbox.call(NORMAL, "check", {"n": 1}) == {"accept": True, "got": {"n": 1}}


# --- the happy path and the host API ---------------------------------------------------------------


def test_returns_the_functions_json_value(sandbox: Sandbox) -> None:
    argument = {"purpose": "étude ε", "n": [1, 2.5, None, True], "nested": {"k": "v"}}
    assert sandbox.call(NORMAL, "check", argument) == {"accept": True, "got": argument}


def test_run_reports_fuel_and_time(sandbox: Sandbox) -> None:
    result = sandbox.run(NORMAL, "check", 1)
    assert 0 < result.fuel_used < sandbox.limits.fuel
    assert result.seconds > 0


def test_allowed_modules_work(sandbox: Sandbox) -> None:
    source = src("""
        import binascii
        import json
        import math
        import re

        def check(request):
            return [math.sqrt(request), json.loads('[1]'), binascii.hexlify(b'ab').decode(),
                    re.match('a+', 'aab').group(0)]
        """)
    assert sandbox.call(source, "check", 16) == [4.0, [1], "6162", "aa"]


def test_job_and_listing_return_what_the_host_gives(sandbox: Sandbox) -> None:
    host = FakeHost(job={"id": 1, "purpose": "screening"}, listing={"id": 9, "schema": {"x": "f32"}})
    source = "def check(request):\n    return [job(), listing()]\n"
    assert sandbox.call(source, "check", None, host=host) == [
        {"id": 1, "purpose": "screening"},
        {"id": 9, "schema": {"x": "f32"}},
    ]


def test_chain_call_goes_through_the_host(sandbox: Sandbox) -> None:
    host = FakeHost()
    source = "def check(request):\n    return chain_call('0xabc', 'holds(address)(bool)', [request])\n"
    answer = sandbox.call(source, "check", "0xdef", host=host)
    assert answer == {"address": "0xabc", "signature": "holds(address)(bool)", "args": ["0xdef"]}
    assert host.calls == [("0xabc", "holds(address)(bool)", ["0xdef"])]


def test_a_host_error_is_a_runtime_error_the_contract_may_catch(sandbox: Sandbox) -> None:
    catches = src("""
        def check(request):
            try:
                chain_call('0xabc', 'fails()(bool)', [])
            except RuntimeError as e:
                return str(e)
        """)
    assert "execution reverted" in sandbox.call(catches, "check", None, host=FakeHost())
    uncaught = "def check(request):\n    return chain_call('0xabc', 'fails()(bool)', [])\n"
    with pytest.raises(ContractError, match="execution reverted") as info:
        sandbox.call(uncaught, "check", None, host=FakeHost())
    assert info.value.kind == "raised"


def test_recover_matches_eth_account(sandbox: Sandbox) -> None:
    message = "sterling:credential:" + CONSUMER.address.lower()
    signature = CONSUMER.sign_message(encode_defunct(text=message)).signature.to_0x_hex()
    source = "def check(request):\n    return recover(request['message'], request['signature'])\n"
    got = sandbox.call(source, "check", {"message": message, "signature": signature}, host=FakeHost())
    assert got == CONSUMER.address


def test_without_a_host_the_host_functions_fail_cleanly(sandbox: Sandbox) -> None:
    with pytest.raises(ContractError, match="no host API") as info:
        sandbox.call("def check(request):\n    return job()\n", "check", None)
    assert info.value.kind == "raised"


def test_host_call_count_is_limited(sandbox: Sandbox) -> None:
    source = "def check(request):\n    for i in range(10):\n        job()\n    return True\n"
    limited = Sandbox(Limits(max_host_calls=3))
    with pytest.raises(ContractError, match="more than 3 host calls") as info:
        limited.call(source, "check", None, host=FakeHost())
    assert info.value.kind == "fuel"
    assert Sandbox(Limits(max_host_calls=10)).call(source, "check", None, host=FakeHost()) is True
    assert_still_works(sandbox)


def test_a_host_answer_over_the_limit_is_an_error_not_a_crash(sandbox: Sandbox) -> None:
    host = FakeHost(job={"blob": "x" * 100_000})
    with pytest.raises(ContractError, match="over the limit") as info:
        sandbox.call("def check(request):\n    return job()\n", "check", None, host=host)
    assert info.value.kind == "raised"
    assert_still_works(sandbox)


def test_runs_do_not_share_state(sandbox: Sandbox) -> None:
    source = src("""
        SEEN = []

        def check(request):
            SEEN.append(request)
            return len(SEEN)
        """)
    assert sandbox.call(source, "check", "a") == 1
    assert sandbox.call(source, "check", "b") == 1
    setter = "def check(request):\n    global LEFT\n    LEFT = 1\n    return True\n"
    reader = "def check(request):\n    try:\n        return LEFT\n    except NameError:\n        return 0\n"
    assert sandbox.call(setter, "check", None) is True
    assert sandbox.call(reader, "check", None) == 0


def test_concurrent_runs_are_independent(sandbox: Sandbox) -> None:
    results: dict[int, Any] = {}

    def work(i: int) -> None:
        results[i] = sandbox.call("def check(request):\n    return request * 2\n", "check", i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: 2 * i for i in range(4)}


def test_a_warm_call_is_faster_than_the_first(tmp_path: Path) -> None:
    """Cold (compiling the module) and warm in a fresh process, so the first call really is cold."""
    script = src("""
        import json, time
        from sterling.enclave.sandbox import Sandbox
        s = Sandbox()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            s.call("def check(r):\\n    return True\\n", "check", None)
            times.append(time.perf_counter() - start)
        print(json.dumps(times))
        """)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    cold, *warm = json.loads(out.stdout)
    assert max(warm) < cold


# --- static checks ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("import os\ndef check(r):\n    return 1\n", "imports os; contracts may import only binascii, json"),
        ("from os import path\ndef check(r):\n    return 1\n", "imports os"),
        ("import sys, json\ndef check(r):\n    return 1\n", "imports sys"),
        ("def check(r):\n    import socket\n    return 1\n", "line 2: imports socket"),
        ("def check(r):\n    return open('/etc/passwd').read()\n", "uses open"),
        ("def check(r):\n    return __import__('os')\n", "uses __import__"),
        ("def check(r):\n    return eval('1')\n", "uses eval"),
        ("def check(r):\n    exec('x = 1')\n", "uses exec"),
        ("def check(r):\n    return globals()\n", "uses globals"),
        ("def check(r):\n    return input()\n", "uses input"),
        ("def check(r):\n    return __sterling_host.call('job', '[]')\n", "uses __sterling_host"),
    ],
)
def test_forbidden_imports_and_names(sandbox: Sandbox, source: str, fragment: str) -> None:
    with pytest.raises(ContractError, match=fragment) as info:
        sandbox.call(source, "check", None)
    assert info.value.kind == "forbidden"


def test_every_forbidden_use_is_listed_at_once(sandbox: Sandbox) -> None:
    source = "import os\nimport time\ndef check(r):\n    return open(eval('x'))\n"
    with pytest.raises(ContractError) as info:
        sandbox.call(source, "check", None)
    for fragment in ("imports os", "imports time", "uses open", "uses eval"):
        assert fragment in str(info.value)


def test_syntax_error_names_the_line(sandbox: Sandbox) -> None:
    with pytest.raises(ContractError, match="line 2") as info:
        sandbox.call("def check(r):\n    return (1\n", "check", None)
    assert info.value.kind == "syntax"


def test_syntax_micropython_lacks_is_a_syntax_error_too(sandbox: Sandbox) -> None:
    source = "def check(r):\n    match r:\n        case 1:\n            return 1\n"
    with pytest.raises(ContractError) as info:
        sandbox.call(source, "check", 1)
    assert info.value.kind == "syntax"
    assert_still_works(sandbox)


def test_source_over_64_kib_is_oversized(sandbox: Sandbox) -> None:
    source = NORMAL + "# " + "x" * 70_000 + "\n"
    with pytest.raises(ContractError, match="limit is 65536") as info:
        sandbox.call(source, "check", None)
    assert info.value.kind == "oversized"


def test_missing_function(sandbox: Sandbox) -> None:
    with pytest.raises(ContractError, match="check") as info:
        sandbox.call("def chek(r):\n    return 1\n", "check", None)
    assert info.value.kind == "missing"
    assert sandbox.defines(NORMAL, "check")
    assert not sandbox.defines(NORMAL, "keep")
    assert not sandbox.defines("def outer():\n    def check(r):\n        pass\n", "check")


def test_a_bad_function_name_or_argument_is_the_callers_mistake(sandbox: Sandbox) -> None:
    with pytest.raises(UsageError):
        sandbox.call(NORMAL, "check(1); import os", None)
    with pytest.raises(UsageError):
        sandbox.call(NORMAL, "check", {1, 2})


# --- misbehaving contracts: each stopped with its reason, and the host process goes on --------------

MALICIOUS = {
    "infinite loop": ("def check(r):\n    while True:\n        pass\n", "fuel", "does it loop forever"),
    "unbounded allocation": (
        "def check(r):\n    x = []\n    while True:\n        x.append('a' * 1000)\n",
        "memory",
        "MemoryError",
    ),
    "huge allocation": ("def check(r):\n    return len(bytearray(50_000_000))\n", "memory", "MemoryError"),
    "deep recursion": (
        "def down(n):\n    return down(n + 1)\n\ndef check(r):\n    return down(0)\n",
        "raised",
        "RuntimeError: maximum recursion depth exceeded",
    ),
    "raises": (
        "def check(r):\n    x = 1\n    raise ValueError('bad input ' + str(x))\n",
        "raised",
        r"ValueError: bad input 1 \(line 3\)",
    ),
    "raises at import": ("X = 1 // 0\ndef check(r):\n    return X\n", "raised", "ZeroDivisionError"),
    "returns a set": ("def check(r):\n    return {1, 2}\n", "garbage", "type set, which is not JSON"),
    "returns an object": (
        "class A:\n    pass\n\ndef check(r):\n    return A()\n",
        "garbage",
        "type A, which is not JSON",
    ),
    "returns nan": ("def check(r):\n    return float('nan')\n", "garbage", "not JSON"),
    "returns a huge result": ("def check(r):\n    return [12345678] * 10000\n", "oversized", "65536 bytes"),
    "prints megabytes": (
        "def check(r):\n    while True:\n        print('x' * 1000)\n",
        "oversized",
        "printed more than 262144 bytes",
    ),
    "returns JSON nested too deeply": (
        "def check(r):\n    x = []\n    for i in range(2000):\n        x = [x]\n    return x\n",
        "garbage",
        "nested deeper than 64",
    ),
    "recursion in the result": (
        "def check(r):\n    x = []\n    for i in range(20000):\n        x = [x]\n    return x\n",
        "raised",
        r"maximum recursion depth exceeded$",
    ),
    "exits early": ("def check(r):\n    raise SystemExit\n", "raised", "without returning"),
    "check is not a function": ("check = 3\n", "missing", "check"),
}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_misbehaving_contract_is_stopped_and_the_host_survives(sandbox: Sandbox, case: str) -> None:
    source, kind, fragment = MALICIOUS[case]
    with pytest.raises(ContractError, match=fragment) as info:
        sandbox.call(source, "check", None)
    assert info.value.kind == kind
    assert_still_works(sandbox)


def test_missing_at_run_time_when_the_name_is_not_callable(sandbox: Sandbox) -> None:
    # Statically `check` is defined; at run time it has been replaced by a number.
    source = "def check(r):\n    return 1\n\ncheck = 3\n"
    with pytest.raises(ContractError) as info:
        sandbox.call(source, "check", None)
    assert info.value.kind == "missing"


def test_wall_clock_limit_stops_busy_work(sandbox: Sandbox) -> None:
    busy = Sandbox(Limits(fuel=10**13, wall_seconds=0.05))
    source = "def check(r):\n    n = 0\n    while True:\n        n = (n * 31 + 7) % 1000003\n"
    with pytest.raises(ContractError, match="wall-clock") as info:
        busy.call(source, "check", None)
    assert info.value.kind == "timeout"
    assert_still_works(sandbox)


def test_sleeping_is_impossible_even_past_the_static_checks() -> None:
    # `time` is not an allowed import; run the raw guest program to show the boundary holds too.
    program = src("""
        import time
        try:
            time.sleep(30)
            print('slept')
        except OSError as e:
            print('no', e)
        """)
    run, _ = _execute(program, Limits(wall_seconds=0.5), None)
    assert run.output[1].decode().startswith("no")


def test_the_guest_cannot_read_host_files_even_past_the_static_checks(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("the hospital's data")
    program = src(f"""
        import os
        results = []
        for attempt in (lambda: open({str(secret)!r}).read(), lambda: open('/etc/passwd').read(),
                        lambda: os.listdir('/'), lambda: os.listdir('.'), lambda: os.stat({str(secret)!r})):
            try:
                results.append(repr(attempt()))
            except OSError as e:
                results.append('OSError')
        results.append(repr(os.getenv('HOME')))
        print(results)
        """)
    run, _ = _execute(program, Limits(), None)
    out = run.output[1].decode()
    assert "hospital" not in out
    assert out.strip() == str(["OSError"] * 5 + ["None"])
