# pragma version ~=0.4.3
"""
@title Sterling Pools
@notice Pooled datasets of many contributors, and their payouts by Merkle
        proof. A pool is one Marketplace listing that this contract
        publishes (so it is the listing's provider and its budget's owner);
        contributors join it one transaction each, with one sealed record
        each, their own epsilon cap and their own consent. A job over a pool
        reserves and charges the pool's single budget, so its gas does not
        depend on how many contributors it has.
@dev    A contributor's spend is an upper bound read from the pool's
        budget: min(spent - joined_spent, cap), where joined_spent is the
        budget's spent when they joined. The enclave includes a member in a
        job only while spent + reserved - joined_spent <= cap at the job's
        claim (reserved covers every job running, this one included), so no
        set of jobs can take a member past their cap; once spent -
        joined_spent reaches the cap the member is out for good.
        Payouts: the enclave holding a job commits, before it settles, one
        Merkle root over (job, listing, index, account, amount) leaves
        (sorted-pair keccak, as Uniswap's MerkleDistributor and
        OpenZeppelin's MerkleProof). Once the job is completed anyone may
        finalize it: the listing's payout is pulled from the Marketplace,
        at most the committed total is claimable, and the rest (all of it
        without a root) is credited to the job's consumer. Claims credit
        balances that their owners withdraw with all gas forwarded.
        Revert messages start with "pools:".
"""

MAX_URI: constant(uint256) = 256
MAX_SEALED: constant(uint256) = 512
MAX_LISTINGS: constant(uint256) = 32
MAX_PROOF: constant(uint256) = 32
COMPLETED: constant(uint8) = 3
CLAIMED: constant(uint8) = 2
# The pool listing's sealed key on the Marketplace: a marker, never unsealed (each member seals their own).
POOL_MARKER: constant(Bytes[16]) = b"sterling.pool.v1"


struct Terms:
    price_per_job: uint256
    price_per_epsilon: uint256
    max_epsilon_per_job: uint256
    policy: address
    pinned_measurement: bytes32
    price_per_prediction: uint256


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
    pending_deadline: uint256


struct Allocation:
    listing_id: uint256
    reserved: uint256
    price: uint256
    spent: uint256
    payout: uint256
    weight: uint256


interface IMarketplace:
    def publish(data_uri: String[MAX_URI], data_hash: bytes32, sealed_key: Bytes[MAX_SEALED], contract_hash: bytes32, terms: Terms, epsilon_budget: uint256, delta: uint256) -> uint256: nonpayable
    def withdraw_listing(listing_id: uint256): nonpayable
    def withdraw(): nonpayable
    def budgets(data_hash: bytes32) -> Budget: view
    def balances(account: address) -> uint256: view
    def job(job_id: uint256) -> Job: view
    def allocations(job_id: uint256) -> DynArray[Allocation, MAX_LISTINGS]: view


struct Pool:
    curator: address
    data_hash: bytes32
    total: uint256          # the budget's total (micro-epsilon): no cap may exceed it
    members: uint256        # how many have joined (indices 0 .. members-1)
    open: bool


struct Member:
    account: address
    joined_spent: uint256   # the budget's spent when they joined
    cap: uint256            # micro-epsilon
    left: bool
    commitment: bytes32     # keccak256(abi_encode(keccak256(uri), data_hash, keccak256(sealed_key)))


# One per (job, pool listing). `packed` keeps what a claim reads and writes in one slot:
# bit 255 finalized, bits 128..254 what is claimable, bits 0..127 what was claimed.
struct Settlement:
    root: bytes32
    total: uint256
    committer: address
    packed: uint256


event PoolCreated:
    listing_id: indexed(uint256)
    curator: indexed(address)
    data_hash: indexed(bytes32)
    data_uri: String[MAX_URI]

event PoolClosed:
    listing_id: indexed(uint256)

event Joined:
    listing_id: indexed(uint256)
    index: indexed(uint256)
    account: indexed(address)
    uri: String[MAX_URI]
    data_hash: bytes32
    sealed_key: Bytes[MAX_SEALED]
    cap: uint256
    joined_spent: uint256

event Left:
    listing_id: indexed(uint256)
    index: indexed(uint256)
    account: indexed(address)

event PayoutsCommitted:
    job_id: indexed(uint256)
    listing_id: indexed(uint256)
    enclave: indexed(address)
    root: bytes32
    total: uint256
    tree_uri: String[MAX_URI]

event Finalized:
    job_id: indexed(uint256)
    listing_id: indexed(uint256)
    consumer: indexed(address)
    payout: uint256
    available: uint256
    refunded: uint256

event Claimed:
    job_id: indexed(uint256)
    listing_id: indexed(uint256)
    account: indexed(address)
    index: uint256
    amount: uint256

event Withdrawal:
    account: indexed(address)
    amount: uint256


marketplace: public(immutable(address))
pools: public(HashMap[uint256, Pool])
members: public(HashMap[uint256, HashMap[uint256, Member]])
# 1 + the member index of an account in a pool; 0: not a member.
member_slot: public(HashMap[uint256, HashMap[address, uint256]])
settlements: public(HashMap[uint256, HashMap[uint256, Settlement]])
_claimed_bits: HashMap[uint256, HashMap[uint256, HashMap[uint256, uint256]]]
# 1 + an account's balance once the account is primed (joining primes it), else 0: a claim then
# rewrites a word that is already non-zero (2,900 gas) instead of creating one (20,000 gas).
_balances: HashMap[address, uint256]
# Claimable payouts plus credited balances; at most this contract's ether plus its Marketplace credit.
liabilities: public(uint256)

FINALIZED: constant(uint256) = 1 << 255
HALF: constant(uint256) = 1 << 128
# What is claimable fits bits 128..254 (bit 255 is FINALIZED).
MAX_AMOUNT: constant(uint256) = (1 << 127) - 1


@deploy
def __init__(market: address):
    """
    @param market The Marketplace whose listings this contract publishes.
    """
    assert market.is_contract, "pools: marketplace is not a contract"
    marketplace = market


@external
@payable
def __default__():
    """
    @notice Receives the Marketplace's payouts (pulled by `finalize`); refuses ether from anyone else.
    """
    assert msg.sender == marketplace, "pools: ether only from the marketplace"


# ------------------------------------------------------------------ pools


@external
def create_pool(
    data_uri: String[MAX_URI],
    data_hash: bytes32,
    contract_hash: bytes32,
    terms: Terms,
    epsilon_budget: uint256,
    delta: uint256,
) -> uint256:
    """
    @notice Open a pool: publish its listing on the Marketplace, with this contract as provider.
    @param data_uri The pool's public manifest (schema, classes, name, description).
    @param data_hash sha256 of the manifest; keys the pool's privacy budget.
    @param contract_hash sha256 of the pool's provider contract source (empty: none).
    @param terms The pool's prices, per-job epsilon cap, policy and pinned measurement.
    @param epsilon_budget Total micro-epsilon the pool's data may spend.
    @param delta The largest delta (10**-18 units) a job may ask for.
    @return The pool's listing id.
    """
    listing_id: uint256 = extcall IMarketplace(marketplace).publish(
        data_uri, data_hash, POOL_MARKER, contract_hash, terms, epsilon_budget, delta
    )
    self.pools[listing_id] = Pool(curator=msg.sender, data_hash=data_hash, total=epsilon_budget, members=0, open=True)
    log PoolCreated(listing_id=listing_id, curator=msg.sender, data_hash=data_hash, data_uri=data_uri)
    return listing_id


@internal
@view
def _pool(listing_id: uint256) -> Pool:
    pool: Pool = self.pools[listing_id]
    assert pool.curator != empty(address), "pools: unknown pool"
    return pool


@external
def close_pool(listing_id: uint256):
    """
    @notice Take the pool off sale (its curator only). Jobs already submitted are unaffected.
    """
    pool: Pool = self._pool(listing_id)
    assert msg.sender == pool.curator, "pools: caller is not the curator"
    assert pool.open, "pools: pool already closed"
    self.pools[listing_id].open = False
    extcall IMarketplace(marketplace).withdraw_listing(listing_id)
    log PoolClosed(listing_id=listing_id)


@external
def join(listing_id: uint256, uri: String[MAX_URI], data_hash: bytes32, sealed_key: Bytes[MAX_SEALED], cap: uint256) -> uint256:
    """
    @notice Add one sealed record to an open pool, with the caller's own epsilon cap.
    @param uri Where the record's ciphertext is stored.
    @param data_hash sha256 of the ciphertext.
    @param sealed_key The record's key sealed to the enclave, bound to the caller.
    @param cap The most micro-epsilon the caller's record may be charged (> 0, at most the pool's budget).
    @return The member's index in the pool.
    """
    pool: Pool = self._pool(listing_id)
    assert pool.open, "pools: pool is closed"
    assert self.member_slot[listing_id][msg.sender] == 0, "pools: already a member"
    assert len(uri) > 0, "pools: empty uri"
    assert data_hash != empty(bytes32), "pools: empty data hash"
    assert len(sealed_key) > 0, "pools: empty sealed key"
    assert cap > 0, "pools: zero cap"
    assert cap <= pool.total, "pools: cap above the pool's budget"
    spent: uint256 = (staticcall IMarketplace(marketplace).budgets(pool.data_hash)).spent
    index: uint256 = pool.members
    self.members[listing_id][index] = Member(
        account=msg.sender,
        joined_spent=spent,
        cap=cap,
        left=False,
        commitment=keccak256(abi_encode(keccak256(uri), data_hash, keccak256(sealed_key))),
    )
    self.member_slot[listing_id][msg.sender] = index + 1
    if self._balances[msg.sender] == 0:
        self._balances[msg.sender] = 1
    self.pools[listing_id].members = index + 1
    log Joined(listing_id=listing_id, index=index, account=msg.sender, uri=uri, data_hash=data_hash, sealed_key=sealed_key, cap=cap, joined_spent=spent)
    return index


@external
def leave(listing_id: uint256):
    """
    @notice Withdraw consent: no job claimed from now on uses the caller's record.
    """
    slot: uint256 = self.member_slot[listing_id][msg.sender]
    assert slot != 0, "pools: not a member"
    assert not self.members[listing_id][slot - 1].left, "pools: already left"
    self.members[listing_id][slot - 1].left = True
    log Left(listing_id=listing_id, index=slot - 1, account=msg.sender)


@internal
@view
def _budget(listing_id: uint256) -> Budget:
    return staticcall IMarketplace(marketplace).budgets(self._pool(listing_id).data_hash)


@external
@view
def member_spent(listing_id: uint256, index: uint256) -> uint256:
    """
    @notice An upper bound on the micro-epsilon charged to member `index`'s record:
            everything the pool spent since they joined, at most their cap.
    """
    member: Member = self.members[listing_id][index]
    assert member.account != empty(address), "pools: unknown member"
    return min(self._budget(listing_id).spent - member.joined_spent, member.cap)


@external
@view
def admits(listing_id: uint256, index: uint256) -> bool:
    """
    @notice Whether a job claimed now may use member `index`'s record: they have not left, and
            everything spent or reserved on the pool since they joined is within their cap.
    """
    member: Member = self.members[listing_id][index]
    assert member.account != empty(address), "pools: unknown member"
    budget: Budget = self._budget(listing_id)
    return not member.left and budget.spent + budget.reserved - member.joined_spent <= member.cap


# ---------------------------------------------------------------- payouts


@external
def commit_payouts(job_id: uint256, listing_id: uint256, root: bytes32, total: uint256, tree_uri: String[MAX_URI]):
    """
    @notice The enclave holding `job_id` commits the Merkle root of a pool listing's payouts,
            before it completes the job. It may commit again while it holds the job.
    @param root The root over leaves keccak256(abi_encode(job_id, listing_id, index, account, amount)).
    @param total The sum of the leaves' amounts (wei).
    @param tree_uri Where the public tree (every leaf) is stored.
    """
    self._pool(listing_id)
    job: Job = staticcall IMarketplace(marketplace).job(job_id)
    assert job.state == CLAIMED, "pools: job is not claimed"
    assert job.enclave == msg.sender, "pools: caller does not hold the job"
    assert root != empty(bytes32), "pools: empty root"
    assert total <= MAX_AMOUNT, "pools: total too large"
    assert self.settlements[job_id][listing_id].packed == 0, "pools: already finalized"
    self.settlements[job_id][listing_id] = Settlement(root=root, total=total, committer=msg.sender, packed=0)
    log PayoutsCommitted(job_id=job_id, listing_id=listing_id, enclave=msg.sender, root=root, total=total, tree_uri=tree_uri)


@internal
def _finalize(job_id: uint256, listing_id: uint256) -> uint256:
    self._pool(listing_id)
    job: Job = staticcall IMarketplace(marketplace).job(job_id)
    assert job.state == COMPLETED, "pools: job is not completed"
    payout: uint256 = 0
    found: bool = False
    for a: Allocation in staticcall IMarketplace(marketplace).allocations(job_id):
        if a.listing_id == listing_id:
            payout = a.payout
            found = True
    assert found, "pools: job does not use this pool"
    s: Settlement = self.settlements[job_id][listing_id]
    available: uint256 = 0
    # Only a root the settling enclave committed counts (a revoked holder's stale root does not).
    if s.root != empty(bytes32) and s.committer == job.enclave:
        available = min(s.total, payout)
    packed: uint256 = FINALIZED | (available << 128)
    self.settlements[job_id][listing_id].packed = packed
    refund: uint256 = payout - available
    self._credit(job.consumer, refund)
    self.liabilities += payout
    if staticcall IMarketplace(marketplace).balances(self) > 0:
        extcall IMarketplace(marketplace).withdraw()
    log Finalized(job_id=job_id, listing_id=listing_id, consumer=job.consumer, payout=payout, available=available, refunded=refund)
    return packed


@external
@nonreentrant
def finalize(job_id: uint256, listing_id: uint256):
    """
    @notice Once `job_id` is completed, anyone may make its pool payouts claimable: at most the
            committed total, and the rest of the listing's payout (all of it without a root
            committed by the settling enclave) credited to the job's consumer.
    """
    assert self.settlements[job_id][listing_id].packed == 0, "pools: already finalized"
    self._finalize(job_id, listing_id)


@external
@nonreentrant
def claim(job_id: uint256, listing_id: uint256, index: uint256, account: address, amount: uint256, proof: DynArray[bytes32, MAX_PROOF]):
    """
    @notice Credit `account` its payout `amount` from the tree of (`job_id`, `listing_id`); anyone
            may send it, once per leaf. Finalizes the job first if nobody has.
    @param index The leaf's index in the tree (the member's index in the pool).
    @param proof The sibling hashes from the leaf to the root.
    """
    packed: uint256 = self.settlements[job_id][listing_id].packed
    if packed == 0:
        packed = self._finalize(job_id, listing_id)
    word: uint256 = index >> 8
    bit: uint256 = 1 << (index & 255)
    bits: uint256 = self._claimed_bits[job_id][listing_id][word]
    assert bits & bit == 0, "pools: already claimed"
    node: bytes32 = keccak256(abi_encode(job_id, listing_id, index, account, amount))
    for sibling: bytes32 in proof:
        if convert(node, uint256) < convert(sibling, uint256):
            node = keccak256(concat(node, sibling))
        else:
            node = keccak256(concat(sibling, node))
    assert node == self.settlements[job_id][listing_id].root, "pools: invalid proof"
    claimed: uint256 = (packed & (HALF - 1)) + amount
    assert claimed <= (packed >> 128) & MAX_AMOUNT, "pools: claims above the payout"
    self._claimed_bits[job_id][listing_id][word] = bits | bit
    self.settlements[job_id][listing_id].packed = (packed >> 128 << 128) | claimed
    self._credit(account, amount)
    log Claimed(job_id=job_id, listing_id=listing_id, account=account, index=index, amount=amount)


@external
@view
def is_claimed(job_id: uint256, listing_id: uint256, index: uint256) -> bool:
    """
    @notice Whether leaf `index` of (`job_id`, `listing_id`) was claimed.
    """
    return self._claimed_bits[job_id][listing_id][index >> 8] & (1 << (index & 255)) != 0


@external
@view
def claimable(job_id: uint256, listing_id: uint256) -> (bool, uint256, uint256):
    """
    @notice (finalized, available, claimed) of a pool payout.
    """
    packed: uint256 = self.settlements[job_id][listing_id].packed
    return packed >= FINALIZED, (packed >> 128) & MAX_AMOUNT, packed & (HALF - 1)


@internal
def _credit(account: address, amount: uint256):
    stored: uint256 = self._balances[account]
    if stored == 0:
        stored = 1
    self._balances[account] = stored + amount


@external
@view
def balances(account: address) -> uint256:
    """
    @notice Wei credited to `account` (claims, refunds) and not yet withdrawn.
    """
    return max(self._balances[account], 1) - 1


@external
@nonreentrant
def withdraw():
    """
    @notice Pay the caller its balance (claims, refunds), forwarding all gas so any wallet can
            receive it. The balance is zeroed first; a failed transfer reverts the withdrawal.
    """
    amount: uint256 = max(self._balances[msg.sender], 1) - 1
    assert amount > 0, "pools: nothing to withdraw"
    self._balances[msg.sender] = 1
    self.liabilities -= amount
    log Withdrawal(account=msg.sender, amount=amount)
    ok: bool = raw_call(msg.sender, b"", value=amount, revert_on_failure=False)
    assert ok, "pools: transfer to the caller failed"
