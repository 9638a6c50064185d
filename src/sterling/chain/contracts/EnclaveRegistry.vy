# pragma version ~=0.4.3
"""
@title Sterling EnclaveRegistry
@notice Which enclaves Sterling trusts: the admin, the attestation signer,
        the allow-list of enclave measurements, and the registered enclaves.
        Every change that widens what can read providers' data (a new
        attestation signer, a new measurement) takes effect CHANGE_DELAY
        after it is announced, by an event carrying the time it takes effect,
        so providers see it coming and can withdraw. Changes that narrow it
        (revoking a measurement or an enclave) take effect at once.
@dev    Revert messages start with "registry:". The Marketplace and
        PredictionFees read `is_enclave`/`live_measurement`; `bind` records
        them once, and attestations bind this chain and that Marketplace.
"""

from . import signatures

CHANGE_DELAY: public(constant(uint256)) = 2 * 86400
MAX_INITIAL_MEASUREMENTS: constant(uint256) = 8
ATTESTATION_TAG: constant(bytes32) = keccak256("sterling.attestation.v1")


struct Enclave:
    measurement: bytes32
    hpke_public_key: bytes32
    registered: bool


event AdminChanged:
    previous: indexed(address)
    admin: indexed(address)

event Bound:
    marketplace: indexed(address)
    prediction_fees: indexed(address)

event AttestationSignerAnnounced:
    signer: indexed(address)
    effective_at: uint256

event MeasurementAnnounced:
    measurement: indexed(bytes32)
    effective_at: uint256

event MeasurementRevoked:
    measurement: indexed(bytes32)

event EnclaveRegistered:
    enclave: indexed(address)
    measurement: indexed(bytes32)
    hpke_public_key: bytes32
    signer: address  # the attestation signer that signed for it

event EnclaveRevoked:
    enclave: indexed(address)


admin: public(address)
marketplace: public(address)
prediction_fees: public(address)
# The signer in force until `signer_effective_at`; from then on `pending_signer`.
_signer: address
pending_signer: public(address)
signer_effective_at: public(uint256)
# When each measurement is (or will be) allowed; 0: not allowed.
measurement_effective_at: public(HashMap[bytes32, uint256])
enclaves: public(HashMap[address, Enclave])
enclave_count: public(uint256)


@deploy
def __init__(attestation_signer: address, measurements: DynArray[bytes32, MAX_INITIAL_MEASUREMENTS]):
    """
    @param attestation_signer Key whose signature makes an attestation valid, in force at once.
    @param measurements Measurements allowed from deployment on: public before any data is listed.
    """
    assert attestation_signer != empty(address), "registry: empty attestation signer"
    self.admin = msg.sender
    self._signer = attestation_signer
    log AdminChanged(previous=empty(address), admin=msg.sender)
    log AttestationSignerAnnounced(signer=attestation_signer, effective_at=block.timestamp)
    for m: bytes32 in measurements:
        assert m != empty(bytes32), "registry: empty measurement"
        self.measurement_effective_at[m] = block.timestamp
        log MeasurementAnnounced(measurement=m, effective_at=block.timestamp)


@internal
@view
def _only_admin():
    assert msg.sender == self.admin, "registry: caller is not the admin"


@external
def transfer_admin(new_admin: address):
    """
    @notice Hand the admin role to `new_admin`.
    """
    self._only_admin()
    assert new_admin != empty(address), "registry: empty admin"
    log AdminChanged(previous=self.admin, admin=new_admin)
    self.admin = new_admin


@external
def bind(marketplace: address, prediction_fees: address):
    """
    @notice Record, once, the Marketplace attestations bind to and the fee contract beside it.
    """
    self._only_admin()
    assert self.marketplace == empty(address), "registry: already bound"
    assert marketplace.is_contract and prediction_fees.is_contract, "registry: not a contract"
    self.marketplace = marketplace
    self.prediction_fees = prediction_fees
    log Bound(marketplace=marketplace, prediction_fees=prediction_fees)


# ------------------------------------------------------------ the signer


@internal
@view
def _signer_now() -> address:
    if self.pending_signer != empty(address) and block.timestamp >= self.signer_effective_at:
        return self.pending_signer
    return self._signer


@view
@external
def attestation_signer() -> address:
    """
    @notice The attestation signer in force now (an announced one once its time has come).
    """
    return self._signer_now()


@external
def set_attestation_signer(signer: address) -> uint256:
    """
    @notice Announce a new attestation signer; it replaces the current one
            CHANGE_DELAY from now. Announcing again before then replaces the
            announcement (and restarts the delay).
    @return When the new signer takes effect (unix seconds).
    """
    self._only_admin()
    assert signer != empty(address), "registry: empty attestation signer"
    self._signer = self._signer_now()
    effective_at: uint256 = block.timestamp + CHANGE_DELAY
    self.pending_signer = signer
    self.signer_effective_at = effective_at
    log AttestationSignerAnnounced(signer=signer, effective_at=effective_at)
    return effective_at


# ----------------------------------------------------------- measurements


@internal
@view
def _allowed(measurement: bytes32) -> bool:
    at: uint256 = self.measurement_effective_at[measurement]
    return at != 0 and block.timestamp >= at


@view
@external
def allowed_measurements(measurement: bytes32) -> bool:
    """
    @notice True when `measurement` is allowed now (announced, and its delay over).
    """
    return self._allowed(measurement)


@external
def allow_measurement(measurement: bytes32) -> uint256:
    """
    @notice Announce a measurement for the allow-list; enclaves with it may
            register CHANGE_DELAY from now.
    @return When it takes effect (unix seconds).
    """
    self._only_admin()
    assert measurement != empty(bytes32), "registry: empty measurement"
    assert self.measurement_effective_at[measurement] == 0, "registry: measurement already allowed or announced"
    effective_at: uint256 = block.timestamp + CHANGE_DELAY
    self.measurement_effective_at[measurement] = effective_at
    log MeasurementAnnounced(measurement=measurement, effective_at=effective_at)
    return effective_at


@external
def revoke_measurement(measurement: bytes32):
    """
    @notice Remove a measurement (allowed or announced) at once. Every
            enclave with it stops claiming and settling; their jobs can be
            expired at once.
    """
    self._only_admin()
    assert self.measurement_effective_at[measurement] != 0, "registry: measurement not allowed"
    self.measurement_effective_at[measurement] = 0
    log MeasurementRevoked(measurement=measurement)


# --------------------------------------------------------------- enclaves


@internal
@view
def _attestation_digest(measurement: bytes32, enclave: address, hpke_public_key: bytes32) -> bytes32:
    report_data: bytes32 = keccak256(abi_encode(chain.id, self.marketplace))
    return keccak256(abi_encode(ATTESTATION_TAG, measurement, enclave, hpke_public_key, report_data))


@view
@external
def attestation_digest(measurement: bytes32, enclave: address, hpke_public_key: bytes32) -> bytes32:
    """
    @notice The digest an attestation signs. Its report data binds this
            chain and the bound Marketplace, so an attestation cannot be
            replayed on another deployment.
    """
    return self._attestation_digest(measurement, enclave, hpke_public_key)


@external
def register_enclave(measurement: bytes32, hpke_public_key: bytes32, attestation: Bytes[65]):
    """
    @notice Register the caller as an enclave. The caller must be the
            enclave's signing address, and `attestation` a signature by the
            attestation signer in force now over (measurement, caller, HPKE
            key, report data of this chain and the Marketplace).
    @param measurement Hash of the enclave's code; must be allowed now.
    @param hpke_public_key The enclave's X25519 key that data keys are sealed to.
    @param attestation 65-byte signature by the attestation signer.
    """
    assert self.marketplace != empty(address), "registry: not bound to a marketplace"
    assert self._allowed(measurement), "registry: measurement not allowed"
    assert hpke_public_key != empty(bytes32), "registry: empty hpke key"
    assert not self.enclaves[msg.sender].registered, "registry: enclave already registered"
    digest: bytes32 = self._attestation_digest(measurement, msg.sender, hpke_public_key)
    signer: address = self._signer_now()
    assert signatures._recover(digest, attestation) == signer, "registry: attestation not signed by the attestation signer"
    self.enclaves[msg.sender] = Enclave(measurement=measurement, hpke_public_key=hpke_public_key, registered=True)
    self.enclave_count += 1
    log EnclaveRegistered(enclave=msg.sender, measurement=measurement, hpke_public_key=hpke_public_key, signer=signer)


@external
def revoke_enclave(enclave: address):
    """
    @notice Deregister an enclave at once; its claimed jobs can be expired or re-claimed at once.
    """
    self._only_admin()
    assert self.enclaves[enclave].registered, "registry: unknown enclave"
    self.enclaves[enclave].registered = False
    self.enclave_count -= 1
    log EnclaveRevoked(enclave=enclave)


@view
@internal
def _live_measurement(enclave: address) -> bytes32:
    info: Enclave = self.enclaves[enclave]
    if info.registered and self._allowed(info.measurement):
        return info.measurement
    return empty(bytes32)


@view
@external
def live_measurement(enclave: address) -> bytes32:
    """
    @notice The measurement of `enclave` if it is live (registered, measurement allowed), else empty.
    """
    return self._live_measurement(enclave)


@view
@external
def is_enclave(enclave: address) -> bool:
    """
    @notice True when `enclave` is registered and its measurement still allowed.
    """
    return self._live_measurement(enclave) != empty(bytes32)
