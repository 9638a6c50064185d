# pragma version ~=0.4.3
"""
@title Sterling PredictionFees
@notice Fees for predictions from a completed job's model. Each provider
        is owed `count` times the price per prediction in its listing's
        terms; a payment must cover the sum. Whatever is paid beyond it is
        split by weights (the settlement's, or an enclave's signed
        attribution of the batch), with the rounding remainder to the first
        listing with a non-zero weight, so the shares sum to the payment.
@dev    Reads the job from the Marketplace (`payees`) and the enclave from
        the EnclaveRegistry. Credits balances here that their owners
        `withdraw`. Revert messages start with "fees:".
"""

from . import signatures

MAX_LISTINGS: constant(uint256) = 32
PREDICTION_TAG: constant(bytes32) = keccak256("sterling.predictions.v1")


interface IMarketplace:
    def payees(job_id: uint256) -> (DynArray[uint256, MAX_LISTINGS], DynArray[address, MAX_LISTINGS], DynArray[uint256, MAX_LISTINGS], DynArray[uint256, MAX_LISTINGS]): view
    def registry() -> address: view


interface IEnclaveRegistry:
    def is_enclave(enclave: address) -> bool: view


event PredictionsPaid:
    job_id: indexed(uint256)
    payer: indexed(address)
    count: uint256
    amount: uint256

event PredictionFee:
    job_id: indexed(uint256)
    listing_id: indexed(uint256)
    provider: indexed(address)
    amount: uint256

event Withdrawal:
    account: indexed(address)
    amount: uint256


marketplace: public(immutable(address))
balances: public(HashMap[address, uint256])
# Batches of attributed predictions already paid (by the sha256 of their inputs).
used_batches: public(HashMap[bytes32, bool])
# Sum of credited balances; equals this contract's ether.
liabilities: public(uint256)


@deploy
def __init__(market: address):
    """
    @param market The Marketplace whose completed jobs' models these fees pay for.
    """
    assert market.is_contract, "fees: marketplace is not a contract"
    marketplace = market


@internal
def _split(job_id: uint256, count: uint256, weights: DynArray[uint256, MAX_LISTINGS], attributed: bool, amount: uint256):
    assert count > 0, "fees: zero predictions"
    assert amount > 0, "fees: zero payment"
    ids: DynArray[uint256, MAX_LISTINGS] = []
    providers: DynArray[address, MAX_LISTINGS] = []
    prices: DynArray[uint256, MAX_LISTINGS] = []
    recorded: DynArray[uint256, MAX_LISTINGS] = []
    ids, providers, prices, recorded = staticcall IMarketplace(marketplace).payees(job_id)
    w: DynArray[uint256, MAX_LISTINGS] = recorded
    if attributed:
        assert len(weights) == len(ids), "fees: one weight per listing"
        w = weights
    shares: DynArray[uint256, MAX_LISTINGS] = []
    due: uint256 = 0
    for p: uint256 in prices:
        shares.append(count * p)
        due += count * p
    assert amount >= due, "fees: payment below count x price"
    excess: uint256 = amount - due
    if excess > 0:
        weight_sum: uint256 = 0
        first: uint256 = max_value(uint256)
        for i: uint256 in range(len(w), bound=MAX_LISTINGS):
            if w[i] > 0 and first == max_value(uint256):
                first = i
            weight_sum += w[i]
        assert weight_sum > 0, "fees: job has no prediction weights"
        given: uint256 = 0
        for i: uint256 in range(len(w), bound=MAX_LISTINGS):
            share: uint256 = excess * w[i] // weight_sum
            shares[i] += share
            given += share
        shares[first] += excess - given
    for i: uint256 in range(len(shares), bound=MAX_LISTINGS):
        if shares[i] > 0:
            self.balances[providers[i]] += shares[i]
            log PredictionFee(job_id=job_id, listing_id=ids[i], provider=providers[i], amount=shares[i])
    self.liabilities += amount
    log PredictionsPaid(job_id=job_id, payer=msg.sender, count=count, amount=amount)


@external
@payable
@nonreentrant
def pay_for_predictions(job_id: uint256, count: uint256):
    """
    @notice Pay for a batch of `count` predictions from a completed job's
            model: each provider gets `count` times its price per
            prediction, and the rest of `msg.value` is split by the weights
            the enclave recorded at settlement.
    """
    self._split(job_id, count, [], False, msg.value)


@view
@internal
def _predictions_digest(
    job_id: uint256, payer: address, count: uint256, batch_hash: bytes32, weights: DynArray[uint256, MAX_LISTINGS]
) -> bytes32:
    return keccak256(abi_encode(PREDICTION_TAG, chain.id, self, job_id, payer, count, batch_hash, weights))


@view
@external
def predictions_digest(
    job_id: uint256, payer: address, count: uint256, batch_hash: bytes32, weights: DynArray[uint256, MAX_LISTINGS]
) -> bytes32:
    """
    @notice The digest an enclave signs to attribute one batch of predictions
            to the job's providers: this contract, the job, who pays, how
            many, which batch, and the weights.
    """
    return self._predictions_digest(job_id, payer, count, batch_hash, weights)


@external
@payable
@nonreentrant
def pay_for_attributed_predictions(
    job_id: uint256,
    count: uint256,
    batch_hash: bytes32,
    weights: DynArray[uint256, MAX_LISTINGS],
    enclave: address,
    signature: Bytes[65],
):
    """
    @notice Pay for a batch of predictions that the enclave served and
            attributed: each provider gets `count` times its price per
            prediction, and the rest of `msg.value` is split by `weights`,
            each listing's share of influence on these predictions, signed
            by a live enclave for this payer and this batch. A batch is paid once.
    @param batch_hash sha256 of the batch's inputs (binds the weights to them).
    @param weights Per-listing attribution weights for this batch.
    @param enclave The enclave that served the batch and signed the weights.
    @param signature The enclave's signature over `predictions_digest(...)`.
    """
    assert not self.used_batches[batch_hash], "fees: batch already paid"
    registry: address = staticcall IMarketplace(marketplace).registry()
    assert staticcall IEnclaveRegistry(registry).is_enclave(enclave), "fees: signer is not a registered enclave"
    digest: bytes32 = self._predictions_digest(job_id, msg.sender, count, batch_hash, weights)
    assert signatures._recover(digest, signature) == enclave, "fees: attribution not signed by the enclave"
    self.used_batches[batch_hash] = True
    self._split(job_id, count, weights, True, msg.value)


@external
@nonreentrant
def withdraw():
    """
    @notice Pay the caller every fee credited to it, forwarding all gas;
            the balance is zeroed first, and a failed transfer reverts.
    """
    amount: uint256 = self.balances[msg.sender]
    assert amount > 0, "fees: nothing to withdraw"
    self.balances[msg.sender] = 0
    self.liabilities -= amount
    log Withdrawal(account=msg.sender, amount=amount)
    ok: bool = raw_call(msg.sender, b"", value=amount, revert_on_failure=False)
    assert ok, "fees: transfer to the caller failed"
