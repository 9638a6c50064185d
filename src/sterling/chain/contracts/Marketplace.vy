# pragma version ~=0.4.3
# Optimised for size: 21,749 runtime bytes (about 700 more optimised for gas), leaving room under the
# 22,118 bytes (90% of EIP-170) a contract test holds every runtime to.
# pragma optimize codesize
"""
@title Sterling Marketplace
@notice The on-chain ledger of Sterling: listings of encrypted datasets
        with public terms, privacy budgets kept per data hash, and the job
        lifecycle with escrow, epsilon reservation and settlement by an
        attested enclave. Which enclaves are trusted is the EnclaveRegistry's
        business; per-prediction fees are PredictionFees'.
@dev    Epsilon is a fixed-point integer in micro-epsilon (1 epsilon =
        10**6). Delta is a fixed-point integer in units of 10**-18.
        Money is never pushed to an address: settlement credits balances
        that their owners `withdraw` (pulled with all gas forwarded), so an
        account that refuses ether can never block a settlement. Nothing is
        locked forever: a job not claimed within MAX_PENDING_SECONDS of its
        submission, or whose enclave lost its registration, can be expired
        by anyone. Revert messages start with "marketplace:".
"""

from . import IPolicy
from . import IMarketplace
from . import signatures

implements: IMarketplace


interface IEnclaveRegistry:
    def admin() -> address: view
    def live_measurement(enclave: address) -> bytes32: view
    def allowed_measurements(measurement: bytes32) -> bool: view


MAX_LISTINGS: constant(uint256) = 32
MAX_URI: constant(uint256) = 256
MAX_SEALED: constant(uint256) = 512
MAX_REASON: constant(uint256) = 256
MICRO: constant(uint256) = 10**6
# The longest lease an enclave holds a job for without a heartbeat.
MAX_LEASE_SECONDS: public(constant(uint256)) = 86400
# How long a submitted job waits for an enclave before anyone may expire it (refund, release).
MAX_PENDING_SECONDS: public(constant(uint256)) = 7 * 86400
# How long past its pending deadline a claimed job may keep a lease: no enclave, however live, holds
# an escrow longer than MAX_PENDING_SECONDS + MAX_RUN_SECONDS after the submission.
MAX_RUN_SECONDS: public(constant(uint256)) = 7 * 86400

# Job states; every transition emits an event.
PENDING: constant(uint8) = 1
CLAIMED: constant(uint8) = 2
COMPLETED: constant(uint8) = 3
FAILED: constant(uint8) = 4
CANCELLED: constant(uint8) = 5

# A domain tag keeps a settlement signature from ever verifying as anything else.
SETTLEMENT_TAG: constant(bytes32) = keccak256("sterling.settlement.v1")


struct Terms:
    price_per_job: uint256          # wei per job
    price_per_epsilon: uint256      # wei per whole epsilon
    max_epsilon_per_job: uint256    # micro-epsilon
    policy: address                 # empty: no policy contract
    pinned_measurement: bytes32     # empty: any allowed measurement
    price_per_prediction: uint256   # wei per prediction (PredictionFees)


struct Listing:
    provider: address
    data_hash: bytes32
    data_uri: String[MAX_URI]
    sealed_key: Bytes[MAX_SEALED]
    contract_hash: bytes32
    terms: Terms
    parent: uint256
    active: bool


struct Budget:
    owner: address
    total: uint256
    spent: uint256
    reserved: uint256
    delta: uint256


struct Job:
    consumer: address
    state: uint8
    escrow: uint256
    delta: uint256
    consumer_key: bytes32
    job_hash: bytes32
    job_uri: String[MAX_URI]
    enclave: address
    lease_deadline: uint256
    result_hash: bytes32
    model_uri: String[MAX_URI]
    sealed_model_key: Bytes[MAX_SEALED]
    pending_deadline: uint256       # unclaimed after this, anyone may expire it


# One per listing a job uses: what was reserved and priced at submission,
# what was charged, paid and weighted at settlement.
struct Allocation:
    listing_id: uint256
    reserved: uint256
    price: uint256
    spent: uint256
    payout: uint256
    weight: uint256


event LeaseSecondsChanged:
    lease_seconds: uint256

event ListingPublished:
    listing_id: indexed(uint256)
    provider: indexed(address)
    data_hash: indexed(bytes32)
    parent: uint256
    data_uri: String[MAX_URI]
    contract_hash: bytes32
    price_per_job: uint256
    price_per_epsilon: uint256
    max_epsilon_per_job: uint256
    policy: address
    pinned_measurement: bytes32
    price_per_prediction: uint256

event ListingWithdrawn:
    listing_id: indexed(uint256)

event BudgetCreated:
    data_hash: indexed(bytes32)
    owner: indexed(address)
    total: uint256
    delta: uint256

event BudgetExhausted:
    data_hash: indexed(bytes32)

event JobSubmitted:
    job_id: indexed(uint256)
    consumer: indexed(address)
    job_hash: bytes32
    job_uri: String[MAX_URI]
    escrow: uint256
    delta: uint256
    consumer_key: bytes32

event EpsilonReserved:
    job_id: indexed(uint256)
    listing_id: indexed(uint256)
    data_hash: indexed(bytes32)
    micro_epsilon: uint256
    price: uint256

event EpsilonReleased:
    job_id: indexed(uint256)
    listing_id: indexed(uint256)
    data_hash: indexed(bytes32)
    reserved: uint256
    charged: uint256

event JobCancelled:
    job_id: indexed(uint256)

event JobClaimed:
    job_id: indexed(uint256)
    enclave: indexed(address)
    lease_deadline: uint256

event JobLeaseExtended:
    job_id: indexed(uint256)
    enclave: indexed(address)
    lease_deadline: uint256

event JobProgress:
    job_id: indexed(uint256)
    enclave: indexed(address)
    step: uint256
    steps: uint256
    micro_epsilon: uint256
    lease_deadline: uint256

event JobExpired:
    job_id: indexed(uint256)
    enclave: indexed(address)

event JobCompleted:
    job_id: indexed(uint256)
    enclave: indexed(address)
    result_hash: bytes32
    model_uri: String[MAX_URI]
    sealed_model_key: Bytes[MAX_SEALED]
    paid: uint256
    refunded: uint256
    receipt_hash: bytes32
    receipt_uri: String[MAX_URI]

event JobFailed:
    job_id: indexed(uint256)
    enclave: indexed(address)
    reason: String[MAX_REASON]
    receipt_hash: bytes32
    receipt_uri: String[MAX_URI]

event Payout:
    job_id: indexed(uint256)
    listing_id: indexed(uint256)
    provider: indexed(address)
    amount: uint256
    weight: uint256

event Refund:
    job_id: indexed(uint256)
    consumer: indexed(address)
    amount: uint256

event Withdrawal:
    account: indexed(address)
    amount: uint256


registry: public(immutable(address))
lease_seconds: public(uint256)
listing_count: public(uint256)
job_count: public(uint256)
budgets: public(HashMap[bytes32, Budget])
balances: public(HashMap[address, uint256])
# Sum of open escrow plus credited balances; equals this contract's ether.
liabilities: public(uint256)

_listings: HashMap[uint256, Listing]
_jobs: HashMap[uint256, Job]
_allocations: HashMap[uint256, DynArray[Allocation, MAX_LISTINGS]]


@deploy
def __init__(enclave_registry: address, lease_seconds: uint256):
    """
    @param enclave_registry The EnclaveRegistry that says which enclaves are live, and who is admin.
    @param lease_seconds How long a claimed job stays with its enclave (at most MAX_LEASE_SECONDS).
    """
    assert enclave_registry.is_contract, "marketplace: registry is not a contract"
    registry = enclave_registry
    self._set_lease(lease_seconds)


@internal
def _set_lease(lease_seconds: uint256):
    assert lease_seconds > 0, "marketplace: zero lease"
    assert lease_seconds <= MAX_LEASE_SECONDS, "marketplace: lease above the maximum"
    self.lease_seconds = lease_seconds
    log LeaseSecondsChanged(lease_seconds=lease_seconds)


@external
def set_lease_seconds(lease_seconds: uint256):
    """
    @notice Set the lease length for future claims (the registry's admin only).
    """
    assert msg.sender == staticcall IEnclaveRegistry(registry).admin(), "marketplace: caller is not the admin"
    self._set_lease(lease_seconds)


@view
@internal
def _live_measurement(enclave: address) -> bytes32:
    return staticcall IEnclaveRegistry(registry).live_measurement(enclave)


@view
@external
def settlement_digest(
    job_id: uint256,
    result_hash: bytes32,
    model_uri: String[MAX_URI],
    sealed_model_key: Bytes[MAX_SEALED],
    payouts: DynArray[uint256, MAX_LISTINGS],
    spent: DynArray[uint256, MAX_LISTINGS],
    weights: DynArray[uint256, MAX_LISTINGS],
    receipt_hash: bytes32,
) -> bytes32:
    """
    @notice The digest the enclave signs to settle a job: the job id, the
            result hash, every number the settlement moves, and the hash of
            the privacy receipt that accounts for the epsilon charged.
    """
    return self._settlement_digest(job_id, result_hash, model_uri, sealed_model_key, payouts, spent, weights, receipt_hash)


@internal
@view
def _settlement_digest(
    job_id: uint256,
    result_hash: bytes32,
    model_uri: String[MAX_URI],
    sealed_model_key: Bytes[MAX_SEALED],
    payouts: DynArray[uint256, MAX_LISTINGS],
    spent: DynArray[uint256, MAX_LISTINGS],
    weights: DynArray[uint256, MAX_LISTINGS],
    receipt_hash: bytes32,
) -> bytes32:
    return keccak256(
        abi_encode(
            SETTLEMENT_TAG,
            chain.id,
            self,
            job_id,
            result_hash,
            keccak256(model_uri),
            keccak256(sealed_model_key),
            payouts,
            spent,
            weights,
            receipt_hash,
        )
    )


# --------------------------------------------------------------- listings


@internal
def _check_terms(terms: Terms):
    assert terms.max_epsilon_per_job > 0, "marketplace: zero max epsilon per job"
    if terms.policy != empty(address):
        assert terms.policy.is_contract, "marketplace: policy is not a contract"


@internal
def _add_listing(
    provider: address,
    data_hash: bytes32,
    data_uri: String[MAX_URI],
    sealed_key: Bytes[MAX_SEALED],
    contract_hash: bytes32,
    terms: Terms,
    parent: uint256,
) -> uint256:
    self._check_terms(terms)
    listing_id: uint256 = self.listing_count + 1
    self.listing_count = listing_id
    self._listings[listing_id] = Listing(
        provider=provider,
        data_hash=data_hash,
        data_uri=data_uri,
        sealed_key=sealed_key,
        contract_hash=contract_hash,
        terms=terms,
        parent=parent,
        active=True,
    )
    log ListingPublished(
        listing_id=listing_id,
        provider=provider,
        data_hash=data_hash,
        parent=parent,
        data_uri=data_uri,
        contract_hash=contract_hash,
        price_per_job=terms.price_per_job,
        price_per_epsilon=terms.price_per_epsilon,
        max_epsilon_per_job=terms.max_epsilon_per_job,
        policy=terms.policy,
        pinned_measurement=terms.pinned_measurement,
        price_per_prediction=terms.price_per_prediction,
    )
    return listing_id


@external
def publish(
    data_uri: String[MAX_URI],
    data_hash: bytes32,
    sealed_key: Bytes[MAX_SEALED],
    contract_hash: bytes32,
    terms: Terms,
    epsilon_budget: uint256,
    delta: uint256,
) -> uint256:
    """
    @notice Publish a new dataset. Creates its privacy budget, which every
            later listing of the same data shares.
    @param data_uri Where the ciphertext is stored.
    @param data_hash sha256 of the ciphertext; identifies the data and its budget.
    @param sealed_key The data key sealed to the enclave with HPKE.
    @param contract_hash sha256 of the provider contract source (empty: none).
    @param terms Prices, per-job epsilon cap, policy and pinned measurement.
    @param epsilon_budget Total micro-epsilon this data may ever spend.
    @param delta The largest delta (10**-18 units) a job may ask for.
    @return The new listing id.
    """
    assert data_hash != empty(bytes32), "marketplace: empty data hash"
    assert len(data_uri) > 0, "marketplace: empty data uri"
    assert len(sealed_key) > 0, "marketplace: empty sealed key"
    assert self.budgets[data_hash].owner == empty(address), "marketplace: data already listed; derive a listing instead"
    assert epsilon_budget > 0, "marketplace: zero epsilon budget"
    assert terms.max_epsilon_per_job <= epsilon_budget, "marketplace: max epsilon per job above budget"
    assert delta > 0 and delta < 10**18, "marketplace: delta must be in (0, 1)"
    self.budgets[data_hash] = Budget(owner=msg.sender, total=epsilon_budget, spent=0, reserved=0, delta=delta)
    log BudgetCreated(data_hash=data_hash, owner=msg.sender, total=epsilon_budget, delta=delta)
    return self._add_listing(msg.sender, data_hash, data_uri, sealed_key, contract_hash, terms, 0)


@external
def derive(parent_id: uint256, contract_hash: bytes32, terms: Terms) -> uint256:
    """
    @notice Re-list the data of `parent_id` under new terms. The new listing
            draws on the same privacy budget; it cannot reset or raise it.
    @return The new listing id.
    """
    parent: Listing = self._listings[parent_id]
    assert parent.provider != empty(address), "marketplace: unknown listing"
    assert self.budgets[parent.data_hash].owner == msg.sender, "marketplace: caller does not own the data"
    assert terms.max_epsilon_per_job <= self.budgets[parent.data_hash].total, "marketplace: max epsilon per job above budget"
    return self._add_listing(msg.sender, parent.data_hash, parent.data_uri, parent.sealed_key, contract_hash, terms, parent_id)


@external
def withdraw_listing(listing_id: uint256):
    """
    @notice Take a listing off sale. Jobs already submitted are unaffected.
    """
    listing: Listing = self._listings[listing_id]
    assert listing.provider != empty(address), "marketplace: unknown listing"
    assert listing.provider == msg.sender, "marketplace: caller is not the provider"
    assert listing.active, "marketplace: listing already withdrawn"
    self._listings[listing_id].active = False
    log ListingWithdrawn(listing_id=listing_id)


@view
@external
def listing(listing_id: uint256) -> Listing:
    """
    @notice Everything public about a listing.
    """
    assert self._listings[listing_id].provider != empty(address), "marketplace: unknown listing"
    return self._listings[listing_id]


@view
@external
def listing_provider(listing_id: uint256) -> address:
    """
    @notice The account that published `listing_id` (empty if unknown).
    """
    return self._listings[listing_id].provider


@view
@internal
def _remaining(data_hash: bytes32) -> uint256:
    budget: Budget = self.budgets[data_hash]
    return budget.total - budget.spent - budget.reserved


@view
@external
def remaining_budget(data_hash: bytes32) -> uint256:
    """
    @notice Micro-epsilon still free to reserve for this data.
    """
    return self._remaining(data_hash)


@view
@external
def is_open(listing_id: uint256) -> bool:
    """
    @notice True when the listing can serve a job now: active, and some of
            its data's budget is left after what is spent and reserved.
    """
    listing: Listing = self._listings[listing_id]
    return listing.active and self._remaining(listing.data_hash) > 0


@view
@internal
def _list_price(listing_id: uint256, eps: uint256) -> uint256:
    terms: Terms = self._listings[listing_id].terms
    return terms.price_per_job + terms.price_per_epsilon * eps // MICRO


@view
@external
def list_price(listing_id: uint256, eps: uint256) -> uint256:
    """
    @notice Public price in wei of `eps` micro-epsilon on `listing_id`,
            before any policy contract adjusts it.
    """
    return self._list_price(listing_id, eps)


@view
@internal
def _quote(consumer: address, listing_id: uint256, eps: uint256) -> uint256:
    policy: address = self._listings[listing_id].terms.policy
    if policy == empty(address):
        return self._list_price(listing_id, eps)
    return staticcall IPolicy(policy).price(consumer, listing_id, eps)


@view
@external
def quote(consumer: address, listing_id: uint256, eps: uint256) -> uint256:
    """
    @notice What `consumer` would pay for `eps` on `listing_id`, policy included.
    """
    assert self._listings[listing_id].provider != empty(address), "marketplace: unknown listing"
    return self._quote(consumer, listing_id, eps)


# ------------------------------------------------------------------- jobs


@internal
def _release(job_id: uint256, charged: DynArray[uint256, MAX_LISTINGS]):
    # Release every reservation of the job, charging `charged[i]` of it (empty: nothing) and recording
    # the charge in the allocation.
    allocations: DynArray[Allocation, MAX_LISTINGS] = self._allocations[job_id]
    for i: uint256 in range(len(allocations), bound=MAX_LISTINGS):
        a: Allocation = allocations[i]
        data_hash: bytes32 = self._listings[a.listing_id].data_hash
        self.budgets[data_hash].reserved -= a.reserved
        charge: uint256 = 0
        if len(charged) > 0:
            charge = charged[i]
            self.budgets[data_hash].spent += charge
            self._allocations[job_id][i].spent = charge
        log EpsilonReleased(job_id=job_id, listing_id=a.listing_id, data_hash=data_hash, reserved=a.reserved, charged=charge)
        if charge > 0 and self.budgets[data_hash].spent == self.budgets[data_hash].total:
            log BudgetExhausted(data_hash=data_hash)


@internal
def _credit(account: address, amount: uint256):
    self.balances[account] += amount


@external
@payable
@nonreentrant
def submit_job(
    listing_ids: DynArray[uint256, MAX_LISTINGS],
    epsilons: DynArray[uint256, MAX_LISTINGS],
    max_prices: DynArray[uint256, MAX_LISTINGS],
    delta: uint256,
    consumer_key: bytes32,
    job_hash: bytes32,
    job_uri: String[MAX_URI],
) -> uint256:
    """
    @notice Submit a job: escrow `msg.value` and reserve `epsilons[i]` of
            each listing's budget, atomically. Reverts if any listing is
            closed, any budget or cap is exceeded, any policy refuses, any
            price is above what the consumer agreed to, or the escrow does
            not cover the price. The job may wait MAX_PENDING_SECONDS for an
            enclave; after that anyone may expire it (full refund).
    @param listing_ids The listings the job trains on (no duplicates).
    @param epsilons Micro-epsilon reserved on each listing.
    @param max_prices The most the consumer pays for each listing (the quote it saw).
    @param delta The job's delta (10**-18 units); at most each listing's.
    @param consumer_key The consumer's X25519 public key; the model key is sealed to it.
    @param job_hash sha256 of the sealed job body.
    @param job_uri Where the sealed job body is stored.
    @return The new job id.
    """
    n: uint256 = len(listing_ids)
    assert n > 0, "marketplace: no listings"
    assert len(epsilons) == n and len(max_prices) == n, "marketplace: one epsilon and price per listing"
    assert consumer_key != empty(bytes32), "marketplace: empty consumer key"
    assert job_hash != empty(bytes32), "marketplace: empty job hash"
    assert delta > 0, "marketplace: zero delta"
    job_id: uint256 = self.job_count + 1
    self.job_count = job_id
    allocations: DynArray[Allocation, MAX_LISTINGS] = []
    total: uint256 = 0
    pin: bytes32 = empty(bytes32)
    for i: uint256 in range(n, bound=MAX_LISTINGS):
        listing_id: uint256 = listing_ids[i]
        for j: uint256 in range(i, bound=MAX_LISTINGS):
            assert listing_ids[j] != listing_id, "marketplace: duplicate listing"
        listing: Listing = self._listings[listing_id]
        eps: uint256 = epsilons[i]
        assert listing.provider != empty(address), "marketplace: unknown listing"
        assert listing.active, "marketplace: listing withdrawn"
        assert eps > 0, "marketplace: zero epsilon"
        assert eps <= listing.terms.max_epsilon_per_job, "marketplace: epsilon above per-job cap"
        assert delta <= self.budgets[listing.data_hash].delta, "marketplace: delta above listing delta"
        remaining: uint256 = self._remaining(listing.data_hash)
        assert remaining > 0, "marketplace: budget exhausted"
        assert eps <= remaining, "marketplace: epsilon above remaining budget"
        # A job no enclave could ever claim would lock every budget it names until it expires.
        if listing.terms.pinned_measurement != empty(bytes32):
            assert pin == empty(bytes32) or pin == listing.terms.pinned_measurement, "marketplace: listings pin different measurements"
            pin = listing.terms.pinned_measurement
        if listing.terms.policy != empty(address):
            assert staticcall IPolicy(listing.terms.policy).check(msg.sender, listing_id, job_hash), "marketplace: policy refused the consumer"
        price: uint256 = self._quote(msg.sender, listing_id, eps)
        assert price <= max_prices[i], "marketplace: price above the consumer's maximum"
        self.budgets[listing.data_hash].reserved += eps
        allocations.append(Allocation(listing_id=listing_id, reserved=eps, price=price, spent=0, payout=0, weight=0))
        total += price
        log EpsilonReserved(job_id=job_id, listing_id=listing_id, data_hash=listing.data_hash, micro_epsilon=eps, price=price)
    assert msg.value >= total, "marketplace: escrow below price"
    if pin != empty(bytes32):
        assert staticcall IEnclaveRegistry(registry).allowed_measurements(pin), "marketplace: pinned measurement not in force"
    self._jobs[job_id] = Job(
        consumer=msg.sender,
        state=PENDING,
        escrow=msg.value,
        delta=delta,
        consumer_key=consumer_key,
        job_hash=job_hash,
        job_uri=job_uri,
        enclave=empty(address),
        lease_deadline=0,
        result_hash=empty(bytes32),
        model_uri="",
        sealed_model_key=b"",
        pending_deadline=block.timestamp + MAX_PENDING_SECONDS,
    )
    self._allocations[job_id] = allocations
    self.liabilities += msg.value
    log JobSubmitted(job_id=job_id, consumer=msg.sender, job_hash=job_hash, job_uri=job_uri, escrow=msg.value, delta=delta, consumer_key=consumer_key)
    return job_id


@internal
def _refund_and_release(job_id: uint256, charged: DynArray[uint256, MAX_LISTINGS]):
    # Release the job's reservations, charging `charged` (empty: nothing), and refund all escrow.
    self._release(job_id, charged)
    consumer: address = self._jobs[job_id].consumer
    escrow: uint256 = self._jobs[job_id].escrow
    self._credit(consumer, escrow)
    log Refund(job_id=job_id, consumer=consumer, amount=escrow)


@internal
@view
def _known(job_id: uint256):
    assert self._jobs[job_id].consumer != empty(address), "marketplace: unknown job"


@internal
@view
def _lease_over(job_id: uint256) -> bool:
    # A claimed job's lease is over when its time ran out or its holder is no longer a live enclave.
    if self._jobs[job_id].state != CLAIMED:
        return False
    if block.timestamp > self._jobs[job_id].lease_deadline:
        return True
    return self._live_measurement(self._jobs[job_id].enclave) == empty(bytes32)


@internal
@view
def _new_lease(job_id: uint256) -> uint256:
    return min(block.timestamp + self.lease_seconds, self._jobs[job_id].pending_deadline + MAX_RUN_SECONDS)


@internal
@view
def _lapsed(job_id: uint256) -> bool:
    return block.timestamp > self._jobs[job_id].pending_deadline


@external
@nonreentrant
def cancel_job(job_id: uint256):
    """
    @notice Cancel a job no enclave holds (pending, or its lease is over):
            full refund, reservation released.
    """
    self._known(job_id)
    assert self._jobs[job_id].consumer == msg.sender, "marketplace: caller is not the consumer"
    assert self._jobs[job_id].state == PENDING or self._lease_over(job_id), "marketplace: job is not pending"
    self._jobs[job_id].state = CANCELLED
    self._refund_and_release(job_id, [])
    log JobCancelled(job_id=job_id)


@external
def claim_job(job_id: uint256) -> uint256:
    """
    @notice A registered enclave takes a pending job, or one whose lease is
            over, for `lease_seconds`, until the job's pending deadline.
            Listings that pin a measurement accept only enclaves with that
            measurement.
    @return The lease deadline (unix seconds).
    """
    measurement: bytes32 = self._live_measurement(msg.sender)
    assert measurement != empty(bytes32), "marketplace: caller is not a registered enclave"
    self._known(job_id)
    assert not self._lapsed(job_id), "marketplace: job expired"
    if self._lease_over(job_id):
        log JobExpired(job_id=job_id, enclave=self._jobs[job_id].enclave)
    else:
        assert self._jobs[job_id].state != CLAIMED, "marketplace: job is leased"
        assert self._jobs[job_id].state == PENDING, "marketplace: job is not pending"
    for a: Allocation in self._allocations[job_id]:
        pinned: bytes32 = self._listings[a.listing_id].terms.pinned_measurement
        assert pinned == empty(bytes32) or pinned == measurement, "marketplace: listing pins another measurement"
    deadline: uint256 = self._new_lease(job_id)
    self._jobs[job_id].state = CLAIMED
    self._jobs[job_id].enclave = msg.sender
    self._jobs[job_id].lease_deadline = deadline
    log JobClaimed(job_id=job_id, enclave=msg.sender, lease_deadline=deadline)
    return deadline


@internal
@view
def _only_holder(job_id: uint256):
    self._known(job_id)
    assert self._jobs[job_id].state == CLAIMED, "marketplace: job is not claimed"
    assert self._jobs[job_id].enclave == msg.sender, "marketplace: caller does not hold the job"
    assert self._live_measurement(msg.sender) != empty(bytes32), "marketplace: caller is not a registered enclave"


@external
def extend_lease(job_id: uint256) -> uint256:
    """
    @notice The holding enclave renews its lease before it runs out.
    @return The new lease deadline.
    """
    self._only_holder(job_id)
    assert block.timestamp <= self._jobs[job_id].lease_deadline, "marketplace: lease expired"
    deadline: uint256 = self._new_lease(job_id)
    self._jobs[job_id].lease_deadline = deadline
    log JobLeaseExtended(job_id=job_id, enclave=msg.sender, lease_deadline=deadline)
    return deadline


@external
def report_progress(job_id: uint256, step: uint256, steps: uint256, micro_epsilon: uint256) -> uint256:
    """
    @notice The holding enclave's heartbeat: it reports training progress
            and renews its lease in one call. Only public numbers go on
            chain (steps done, steps planned, epsilon spent so far, which
            follow from the job's public parameters); never a loss or any
            other value computed from private data.
    @param step Training steps done so far.
    @param steps Training steps planned (the budget filter may stop earlier).
    @param micro_epsilon Epsilon spent so far, in micro-epsilon.
    @return The new lease deadline.
    """
    self._only_holder(job_id)
    assert block.timestamp <= self._jobs[job_id].lease_deadline, "marketplace: lease expired"
    assert step <= steps, "marketplace: step beyond steps"
    deadline: uint256 = self._new_lease(job_id)
    self._jobs[job_id].lease_deadline = deadline
    log JobProgress(job_id=job_id, enclave=msg.sender, step=step, steps=steps, micro_epsilon=micro_epsilon, lease_deadline=deadline)
    return deadline


@external
@nonreentrant
def expire_job(job_id: uint256):
    """
    @notice Anyone may expire a job: one whose lease is over (its time ran
            out, or its enclave was revoked) goes back to the pending pool;
            one still unclaimed after its pending deadline is cancelled with
            a full refund and every reservation released.
    """
    self._known(job_id)
    state: uint8 = self._jobs[job_id].state
    lapsed: bool = self._lapsed(job_id)
    if state == PENDING:
        assert lapsed, "marketplace: job not expired"
    else:
        assert state == CLAIMED, "marketplace: job is not pending or claimed"
        assert self._lease_over(job_id), "marketplace: lease not expired"
    log JobExpired(job_id=job_id, enclave=self._jobs[job_id].enclave)
    self._jobs[job_id].enclave = empty(address)
    self._jobs[job_id].lease_deadline = 0
    if lapsed:
        self._jobs[job_id].state = CANCELLED
        self._refund_and_release(job_id, [])
        log JobCancelled(job_id=job_id)
    else:
        self._jobs[job_id].state = PENDING


@external
@nonreentrant
def complete_job(
    job_id: uint256,
    result_hash: bytes32,
    model_uri: String[MAX_URI],
    sealed_model_key: Bytes[MAX_SEALED],
    payouts: DynArray[uint256, MAX_LISTINGS],
    spent: DynArray[uint256, MAX_LISTINGS],
    weights: DynArray[uint256, MAX_LISTINGS],
    receipt_hash: bytes32,
    receipt_uri: String[MAX_URI],
    signature: Bytes[65],
):
    """
    @notice Settle a job. Only the enclave holding it, once, with its
            signature over `settlement_digest(...)`. Credits each listing's
            provider its payout, refunds the rest of the escrow, charges the
            epsilon spent (at most the reservation) and releases the rest,
            and publishes the model key sealed to the consumer. A lease that
            ran out does not stop the holder while no other enclave has
            taken the job over.
    @param result_hash sha256 of the encrypted result (the model, or, when
           the consumer's contract dropped every provider, what was released
           without one).
    @param model_uri Where the encrypted result is stored.
    @param sealed_model_key The result key sealed to the consumer's X25519 key.
    @param payouts Wei paid to each listing's provider; the sum is at most the escrow.
    @param spent Micro-epsilon charged to each listing; each at most its reservation.
    @param weights Per-listing weights that split later per-prediction fees.
    @param receipt_hash sha256 of the privacy receipt: every mechanism run on
           each listing's data, from which anyone recomputes `spent`.
    @param receipt_uri Where the receipt is stored (public).
    @param signature The enclave's signature over the settlement digest.
    """
    self._only_holder(job_id)
    n: uint256 = len(self._allocations[job_id])
    assert len(payouts) == n and len(weights) == n, "marketplace: one payout and weight per listing"
    assert result_hash != empty(bytes32), "marketplace: empty result hash"
    self._check_charge(job_id, spent, receipt_hash)
    digest: bytes32 = self._settlement_digest(job_id, result_hash, model_uri, sealed_model_key, payouts, spent, weights, receipt_hash)
    assert signatures._recover(digest, signature) == msg.sender, "marketplace: settlement not signed by the enclave"
    escrow: uint256 = self._jobs[job_id].escrow
    paid: uint256 = 0
    for p: uint256 in payouts:
        paid += p
    assert paid <= escrow, "marketplace: payouts above escrow"
    self._jobs[job_id].state = COMPLETED
    self._jobs[job_id].result_hash = result_hash
    self._jobs[job_id].model_uri = model_uri
    self._jobs[job_id].sealed_model_key = sealed_model_key
    self._release(job_id, spent)
    for i: uint256 in range(n, bound=MAX_LISTINGS):
        listing_id: uint256 = self._allocations[job_id][i].listing_id
        self._allocations[job_id][i].payout = payouts[i]
        self._allocations[job_id][i].weight = weights[i]
        provider: address = self._listings[listing_id].provider
        self._credit(provider, payouts[i])
        log Payout(job_id=job_id, listing_id=listing_id, provider=provider, amount=payouts[i], weight=weights[i])
    consumer: address = self._jobs[job_id].consumer
    refund: uint256 = escrow - paid
    self._credit(consumer, refund)
    log Refund(job_id=job_id, consumer=consumer, amount=refund)
    log JobCompleted(job_id=job_id, enclave=msg.sender, result_hash=result_hash, model_uri=model_uri, sealed_model_key=sealed_model_key, paid=paid, refunded=refund, receipt_hash=receipt_hash, receipt_uri=receipt_uri)


@internal
@view
def _check_charge(job_id: uint256, spent: DynArray[uint256, MAX_LISTINGS], receipt_hash: bytes32):
    # A charge is one micro-epsilon figure per listing, each within its reservation, accounted for
    # by a privacy receipt.
    assert len(spent) == len(self._allocations[job_id]), "marketplace: one epsilon per listing"
    assert receipt_hash != empty(bytes32), "marketplace: empty receipt hash"
    for i: uint256 in range(len(spent), bound=MAX_LISTINGS):
        assert spent[i] <= self._allocations[job_id][i].reserved, "marketplace: epsilon above reservation"


@external
@nonreentrant
def fail_job(
    job_id: uint256,
    reason: String[MAX_REASON],
    spent: DynArray[uint256, MAX_LISTINGS],
    receipt_hash: bytes32,
    receipt_uri: String[MAX_URI],
):
    """
    @notice The holding enclave gives up on a job: full refund. Before any
            data key was released (bad contract, failed verification,
            missing data) `spent` is empty and nothing is charged. After,
            whatever ran on the data is charged: `spent` has one figure per
            listing (each at most its reservation) and `receipt_hash` commits
            to the privacy receipt that accounts for them. Either way the
            rest of the reservation is released.
    @param reason Why the job failed (public; the consumer reads it).
    @param spent Micro-epsilon charged to each listing, or empty for none.
    @param receipt_hash sha256 of the privacy receipt; must be empty when
           `spent` is, so no receipt stands for a charge never made.
    @param receipt_uri Where the receipt is stored (public).
    """
    self._only_holder(job_id)
    assert len(reason) > 0, "marketplace: empty reason"
    if len(spent) > 0:
        self._check_charge(job_id, spent, receipt_hash)
    elif receipt_hash != empty(bytes32):
        raise "marketplace: receipt without a charge"
    self._jobs[job_id].state = FAILED
    self._refund_and_release(job_id, spent)
    log JobFailed(job_id=job_id, enclave=msg.sender, reason=reason, receipt_hash=receipt_hash, receipt_uri=receipt_uri)


@view
@external
def job(job_id: uint256) -> Job:
    """
    @notice The job's parties, state, lease and result.
    """
    self._known(job_id)
    return self._jobs[job_id]


@view
@external
def allocations(job_id: uint256) -> DynArray[Allocation, MAX_LISTINGS]:
    """
    @notice Per listing: epsilon reserved and price at submission; epsilon
            charged, payout and prediction weight at settlement.
    """
    self._known(job_id)
    return self._allocations[job_id]


# --------------------------------------------------------------- payments


@view
@external
def payees(job_id: uint256) -> (DynArray[uint256, MAX_LISTINGS], DynArray[address, MAX_LISTINGS], DynArray[uint256, MAX_LISTINGS], DynArray[uint256, MAX_LISTINGS]):
    """
    @notice What PredictionFees needs of a completed job: per listing its
            id, provider, price per prediction and settlement weight.
    """
    self._known(job_id)
    assert self._jobs[job_id].state == COMPLETED, "marketplace: job is not completed"
    ids: DynArray[uint256, MAX_LISTINGS] = []
    providers: DynArray[address, MAX_LISTINGS] = []
    prices: DynArray[uint256, MAX_LISTINGS] = []
    weights: DynArray[uint256, MAX_LISTINGS] = []
    for a: Allocation in self._allocations[job_id]:
        ids.append(a.listing_id)
        providers.append(self._listings[a.listing_id].provider)
        prices.append(self._listings[a.listing_id].terms.price_per_prediction)
        weights.append(a.weight)
    return ids, providers, prices, weights


@external
@nonreentrant
def withdraw():
    """
    @notice Pay the caller every wei credited to it (payouts, refunds),
            forwarding all gas so any wallet (a multisig, a proxy) can
            receive it. The balance is zeroed before the transfer, and the
            transfer's failure reverts the whole withdrawal.
    """
    amount: uint256 = self.balances[msg.sender]
    assert amount > 0, "marketplace: nothing to withdraw"
    self.balances[msg.sender] = 0
    self.liabilities -= amount
    log Withdrawal(account=msg.sender, amount=amount)
    ok: bool = raw_call(msg.sender, b"", value=amount, revert_on_failure=False)
    assert ok, "marketplace: transfer to the caller failed"
