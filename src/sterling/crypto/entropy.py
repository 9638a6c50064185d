"""The enclave's secret randomness: one keyed cryptographic stream, never a job's seed.

Every random choice that protects private data (which rows a DP-SGD step
samples, its Gaussian noise, the noise of every released value) is drawn
from a `SecretRandom`: the keystream of AES-256 in counter mode under a key
the enclave draws from the operating system (`os.urandom`), read through
`cryptography`, which uses OpenSSL's AES-NI code. Nothing a consumer writes
reaches the key, so replaying a job on the same data gives another run.

Streams are split by label (`child`), with HKDF-SHA256, so that each job,
and each use inside a job, reads its own stream and no two uses share bytes.

Tests that need a run to repeat build a generator with `for_tests(seed)`;
that is a function of this module, called from test code. No field of a
job, no setting and no environment variable leads to it.

Conversions (all exact, no float compared with a float threshold):
- `below(m)`: a uniform integer in [0, m), by rejection on whole bytes;
- `bernoulli(n, q)`: n independent draws, each True with probability
  ⌊q·2⁶⁴⌋/2⁶⁴ ≤ q, decided by comparing uniform 64-bit integers with that
  integer threshold (a float32 `rand() < q` has a 2⁻²⁴ grid);
- `normal(n)`: standard normals for Gaussian mechanisms on vectors (DP-SGD's
  noise, attribution): Box–Muller on 24-bit uniforms, and, as Opacus's secure
  mode does against floating-point attacks on the sampler (Holohan and
  Braghin, 2021), each value the sum of four such normals halved. Scalars
  that leave the enclave use an exact discrete mechanism instead
  (`sterling.privacy.noise`).
"""

from __future__ import annotations

import hashlib
import os
from fractions import Fraction

import numpy as np
import torch
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sterling.errors import UsageError

KEY_BYTES = 32
_TWO64 = 1 << 64
#: Normals summed per value in `normal` (Opacus's secure mode sums four and halves).
SECURE_TERMS = 4


class SecretRandom:
    """A cryptographic random stream under a 32-byte key (AES-256-CTR keystream)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise UsageError(f"a SecretRandom key is {KEY_BYTES} bytes, got {len(key)}")
        self._key = key
        # A fresh key per stream, so a zero nonce is never reused under it.
        self._stream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()

    @classmethod
    def from_os(cls) -> SecretRandom:
        """A stream keyed from the operating system's random source: the enclave's only kind."""
        return cls(os.urandom(KEY_BYTES))

    @classmethod
    def for_tests(cls, seed: int) -> SecretRandom:
        """A repeatable stream for tests; never reachable from a job."""
        return cls(hashlib.sha256(f"sterling.test-entropy:{seed}".encode()).digest())

    def child(self, label: str) -> SecretRandom:
        """An independent stream for one use, derived from this key and `label`."""
        kdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=label.encode())
        return SecretRandom(kdf.derive(self._key))

    # ------------------------------------------------------------------ raw

    def bytes(self, n: int) -> bytes:
        """The next `n` bytes of the keystream."""
        return self._stream.update(bytes(n))

    def u64(self, n: int) -> np.ndarray:
        """`n` uniform 64-bit unsigned integers."""
        return np.frombuffer(self.bytes(8 * n), dtype=np.uint64)

    def below(self, m: int) -> int:
        """A uniform integer in [0, m), exactly (rejection sampling on whole bytes)."""
        if m < 1:
            raise UsageError(f"below(m) needs m ≥ 1, got {m}")
        if m == 1:
            return 0
        nbytes = ((m - 1).bit_length() + 7) // 8
        span = 1 << (8 * nbytes)
        limit = span - span % m  # the largest multiple of m not above span: accept below it
        while True:
            u = int.from_bytes(self.bytes(nbytes), "little")
            if u < limit:
                return u % m

    def bernoulli_exact(self, p: Fraction) -> bool:
        """True with probability exactly p (a rational in [0, 1])."""
        if not 0 <= p <= 1:
            raise UsageError(f"a probability is in [0, 1], got {p}")
        return self.below(p.denominator) < p.numerator

    # ------------------------------------------------------------ sampling

    def bernoulli(self, n: int, q: float) -> torch.Tensor:
        """`n` independent booleans, each True with probability ⌊q·2⁶⁴⌋/2⁶⁴ (at most q)."""
        if not 0 <= q <= 1:
            raise UsageError(f"a sampling rate is in [0, 1], got {q}")
        if q == 1:
            return torch.ones(n, dtype=torch.bool)
        threshold = np.uint64(int(Fraction(q) * _TWO64))  # exact: q is a binary fraction
        return torch.from_numpy(self.u64(n) < threshold)

    def _box_muller(self, n: int) -> np.ndarray:
        """`n` standard normals (float32) by Box–Muller on 24-bit uniforms in (0, 1).

        float32 throughout, as torch's own `randn`: the noise is added to float32 gradients. The
        smallest uniform, 2⁻²⁵, bounds one normal by 5.8; the sum of four (`normal`) by 11.6.
        """
        pairs = (n + 1) // 2
        u = (np.frombuffer(self.bytes(8 * pairs), dtype=np.uint32) >> np.uint32(8)).astype(np.float32)
        u += np.float32(0.5)
        u *= np.float32(2.0**-24)
        r = np.log(u[:pairs])
        r *= np.float32(-2.0)
        np.sqrt(r, out=r)
        theta = u[pairs:]
        theta *= np.float32(2.0 * np.pi)
        out = np.empty(2 * pairs, dtype=np.float32)
        np.multiply(r, np.cos(theta), out=out[:pairs])
        np.multiply(r, np.sin(theta), out=out[pairs:])
        return out[:n]

    def normal32(self, n: int) -> np.ndarray:
        """`n` standard normals (float32), each the sum of four Box–Muller normals halved."""
        out: np.ndarray = self._box_muller(SECURE_TERMS * n).reshape(SECURE_TERMS, n).sum(axis=0)
        out *= np.float32(0.5)
        return out

    def normal(self, n: int) -> torch.Tensor:
        """`n` standard normals as a float32 tensor, for Gaussian noise on vectors (see `normal32`)."""
        return torch.from_numpy(self.normal32(n))
