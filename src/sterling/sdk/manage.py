"""After publishing or submitting: read and withdraw a balance, re-list data, take a listing off sale.

Settlement never sends ether: payouts, refunds and per-prediction fees are credited to a balance
on the Marketplace, which its owner withdraws (docs/protocol.md, "Pull payments"). A provider may
also re-list its data under new terms (`derive`: same data, same privacy budget) or take a listing
off sale. The CLI (`sterling account`, `sterling provider derive|withdraw`) and the web app call
these functions, so both check the same things and say the same words. Every refusal comes before
a transaction is sent; a race lost to another transaction still ends as the contract's revert.
"""

from __future__ import annotations

import dataclasses
import hashlib
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils.address import is_address, to_checksum_address

from sterling.chain.marketplace import Marketplace
from sterling.chain.types import ZERO32, ZERO_ADDRESS, Listing, Terms
from sterling.chain.units import from_micro
from sterling.errors import UsageError

WEI_PER_ETH = 10**18


class NothingToWithdraw(UsageError):
    """The account has no wei credited: withdrawing would send nothing (the contract refuses it too)."""


class NotYours(UsageError):
    """The signing account is not the provider of the listing it tries to change."""

    field = "account"


class AlreadyWithdrawn(UsageError):
    """The listing was already taken off sale."""


class TermError(UsageError):
    """A derived listing's term is bad; `field` names it as the web API does."""

    def __init__(self, message: str, *, field: str) -> None:
        self.field = field
        super().__init__(message)


#: A term's words in ListingTerms' messages (each problem names its term first), and its field.
TERM_FIELDS = (
    ("price per job", "price_per_job_wei"),
    ("price per ε", "price_per_epsilon_wei"),
    ("price per prediction", "price_per_prediction_wei"),
    ("max epsilon per job", "max_epsilon_per_job"),
    ("policy", "policy"),
    ("pinned measurement", "pinned_measurement"),
)


def _term_error(exc: UsageError) -> TermError:
    first = str(exc).removeprefix("invalid terms: ").split("; ")[0]
    field = next((name for words, name in TERM_FIELDS if first.startswith(words)), "terms")
    return TermError(str(exc), field=field)


def eth_text(wei: int) -> str:
    """An exact amount in ETH, no float in between: ``eth_text(1_500_000_000_000_000) == "0.0015 ETH"``."""
    sign = "-" if wei < 0 else ""
    whole, frac = divmod(abs(wei), WEI_PER_ETH)
    digits = f"{frac:018d}".rstrip("0")
    return f"{sign}{whole}{'.' + digits if digits else ''} ETH"


# ---------------------------------------------------------------- balances


@dataclass(frozen=True)
class Balance:
    """What the Marketplace holds for `address` (`balance_wei`) and the ether in its own wallet."""

    address: str
    marketplace: str
    balance_wei: int
    ether_wei: int

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "marketplace": self.marketplace,
            "balance_wei": self.balance_wei,
            "balance_eth": eth_text(self.balance_wei).removesuffix(" ETH"),
            "ether_wei": self.ether_wei,
        }


def balance(market: Marketplace, address: str) -> Balance:
    """The Marketplace balance (payouts, refunds, fees not yet withdrawn) and wallet ether of `address`."""
    if not is_address(address):
        raise UsageError(f"not an address: {address!r}")
    checksum = to_checksum_address(address)
    return Balance(
        checksum,
        market.address,
        market.balance_of(checksum),
        int(market.chain.w3.eth.get_balance(checksum)),
    )


@dataclass(frozen=True)
class Withdrawal:
    """A withdrawal done: `amount_wei` left the Marketplace for the account's wallet.

    `tx_hashes` are the transactions that paid it (one per contract that held some of it).
    """

    address: str
    amount_wei: int
    balance_wei: int
    ether_wei: int
    tx_hashes: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "withdrawn_wei": self.amount_wei,
            "withdrawn_eth": eth_text(self.amount_wei).removesuffix(" ETH"),
            "balance_wei": self.balance_wei,
            "ether_wei": self.ether_wei,
            "tx_hashes": list(self.tx_hashes),
        }


def withdraw(
    market: Marketplace, account: LocalAccount, *, lock: AbstractContextManager[Any] | None = None
) -> Withdrawal:
    """Send everything credited to `account` to its wallet; NothingToWithdraw if that is 0 wei."""
    with lock if lock is not None else nullcontext():
        credited = market.balance_of(account.address)
        if credited == 0:
            raise NothingToWithdraw(
                f"nothing to withdraw: {account.address} has 0 wei credited on Marketplace {market.address}"
            )
        start = int(market.chain.w3.eth.block_number) + 1
        amount = market.withdraw(account)
    me = account.address.lower()
    paid = [
        ev.tx_hash
        for ev in market.events(from_block=start)
        if ev.name == "Withdrawal" and str(ev.args.get("account", "")).lower() == me
    ]
    return Withdrawal(
        account.address,
        amount,
        market.balance_of(account.address),
        int(market.chain.w3.eth.get_balance(account.address)),
        tuple(dict.fromkeys(paid)),
    )


def credits(market: Marketplace, address: str) -> dict[str, list[dict[str, Any]]]:
    """Where an account's credits came from, job by job: `payouts` as a provider, `refunds` as a buyer.

    Read from the jobs the chain records (settled, failed or cancelled); wei as decimal strings.
    The balance is what of all that (and of per-prediction fees) is not yet withdrawn.
    """
    from sterling.chain.types import JobState
    from sterling.sdk.jobview import job_detail

    me = address.lower()
    mine = {item.id for item in market.listings() if item.provider.lower() == me}
    payouts: list[dict[str, Any]] = []
    refunds: list[dict[str, Any]] = []
    for job in market.jobs():
        for a in job.allocations:
            if a.listing_id in mine and a.payout > 0:
                payouts.append(
                    {"job_id": job.id, "listing_id": a.listing_id, "state": job.state.label,
                     "payout_wei": str(a.payout)}
                )  # fmt: skip
        final = job.state in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED)
        if job.consumer.lower() == me and final:
            refund = job_detail(market, job.id).get("refund_wei")
            if refund not in (None, "0"):
                refunds.append({"job_id": job.id, "state": job.state.label, "refund_wei": str(refund)})
    return {"payouts": payouts, "refunds": refunds}


# ---------------------------------------------------------------- listings

#: Terms a derived listing takes from its parent unless given.
KEEP: Any = object()


def has_prediction_price() -> bool:
    """Whether this Marketplace's terms carry a price per prediction (they gained one in issue 17)."""
    return "price_per_prediction" in {f.name for f in dataclasses.fields(Terms)}


def owned(market: Marketplace, provider: LocalAccount, listing_id: int) -> Listing:
    """The listing, if `provider` may change it: NotFound if there is none, NotYours if it is another's."""
    listing = market.listing(listing_id)
    owner = listing.budget.owner or listing.provider
    if owner.lower() != provider.address.lower():
        raise NotYours(
            f"listing {listing_id} is not yours: its data belongs to {owner}, and you sign as "
            f"{provider.address}"
        )
    return listing


def derived_terms(
    parent: Listing,
    *,
    price_per_job_wei: int | None = None,
    price_per_epsilon_wei: int | None = None,
    max_epsilon_per_job: float | None = None,
    policy: str | None = KEEP,
    pinned_measurement: str | None = KEEP,
    price_per_prediction_wei: int | None = None,
) -> Terms:
    """The parent's terms with the changes given (None or KEEP: keep), checked as publish checks them.

    `policy` and `pinned_measurement` None clears them. The cap is checked against the data's whole
    budget, which a derived listing shares; the budget and δ themselves cannot change.
    """
    from sterling.sdk.provider import ListingTerms

    old = parent.terms
    keep_policy = None if old.policy == ZERO_ADDRESS else old.policy
    keep_pin = None if old.pinned_measurement == ZERO32 else "0x" + old.pinned_measurement.hex()
    try:
        terms, _, _ = ListingTerms(
            price_per_job_wei=old.price_per_job if price_per_job_wei is None else price_per_job_wei,
            price_per_epsilon_wei=old.price_per_epsilon
            if price_per_epsilon_wei is None
            else price_per_epsilon_wei,
            epsilon_budget=from_micro(parent.budget.total),
            max_epsilon_per_job=from_micro(old.max_epsilon_per_job)
            if max_epsilon_per_job is None
            else max_epsilon_per_job,
            delta=0.5,  # a derived listing keeps its data's δ; ListingTerms only insists on a valid one
            policy=keep_policy if policy is KEEP else policy,
            pinned_measurement=keep_pin if pinned_measurement is KEEP else pinned_measurement,
        ).to_chain()
    except UsageError as exc:
        raise _term_error(exc) from None
    if has_prediction_price():
        inherited = getattr(old, "price_per_prediction", 0)
        value = inherited if price_per_prediction_wei is None else price_per_prediction_wei
        if value < 0:
            raise TermError(
                f"invalid terms: price per prediction must be ≥ 0 wei, got {value}",
                field="price_per_prediction_wei",
            )
        terms = dataclasses.replace(terms, price_per_prediction=value)
    elif price_per_prediction_wei:
        raise TermError(
            "invalid terms: this Marketplace's listings carry no price per prediction",
            field="price_per_prediction_wei",
        )
    return terms


def contract_hash_for(
    parent: Listing, *, contract_source: str | None = None, drop_contract: bool = False
) -> bytes:
    """The provider contract a derived listing runs: the parent's by default, none, or the data's.

    Enclaves find a listing's contract through its data's manifest, which a derived listing shares
    with its parent, so the only contract it can run is the one that manifest names: a different
    source is refused here rather than left for every job to fail on.
    """
    from sterling.sdk.provider import read_contract
    from sterling.storage.manifest import read_manifest

    if drop_contract and contract_source is not None:
        raise TermError("give a provider contract or drop it, not both", field="contract")
    if drop_contract:
        return ZERO32
    if contract_source is None:
        return parent.contract_hash
    try:
        raw = read_contract(contract_source) or b""
    except UsageError as exc:
        raise TermError(str(exc), field="contract") from None
    digest = hashlib.sha256(raw).digest()
    ref = (read_manifest(parent.data_uri).get("contract") or {}) if parent.data_uri else {}
    published = str(ref.get("sha256") or "").removeprefix("0x")
    if published != digest.hex():
        named = f"the data's contract (sha256 0x{published})" if published else "no contract"
        raise TermError(
            f"a derived listing can only run the provider contract its data's manifest names, "
            f"{named}; this source's sha256 is 0x{digest.hex()}: publish the data again to run another",
            field="contract",
        )
    return digest


def derive(
    market: Marketplace,
    provider: LocalAccount,
    parent_id: int,
    *,
    terms: Terms,
    contract_hash: bytes,
    lock: AbstractContextManager[Any] | None = None,
) -> Listing:
    """Re-list `parent_id`'s data under `terms`, on the same budget; the new listing."""
    if terms.policy != ZERO_ADDRESS and not market.chain.w3.eth.get_code(to_checksum_address(terms.policy)):
        raise TermError(
            f"invalid terms: policy {terms.policy} is not a contract on this chain", field="policy"
        )
    with lock if lock is not None else nullcontext():
        owned(market, provider, parent_id)
        new_id = market.derive(provider, parent_id, terms=terms, contract_hash=contract_hash)
    return market.listing(new_id)


def withdraw_listing(
    market: Marketplace,
    provider: LocalAccount,
    listing_id: int,
    *,
    lock: AbstractContextManager[Any] | None = None,
) -> Listing:
    """Take `listing_id` off sale (jobs already submitted on it are unaffected); the listing after."""
    with lock if lock is not None else nullcontext():
        listing = market.listing(listing_id)
        if listing.provider.lower() != provider.address.lower():
            raise NotYours(
                f"listing {listing_id} is not yours: it was published by {listing.provider}, and you "
                f"sign as {provider.address}"
            )
        if not listing.active:
            raise AlreadyWithdrawn(f"listing {listing_id} is already withdrawn (off sale)")
        market.withdraw_listing(provider, listing_id)
    return market.listing(listing_id)


def provider_listings(market: Marketplace, address: str) -> list[dict[str, Any]]:
    """Every listing `address` published (open or not) as the marketplace shows it, with what each earned.

    `earned_wei` sums the payouts settled to the listing (a decimal string); `jobs` counts the
    jobs that named it.
    """
    from sterling.sdk.listings import summaries

    me = address.lower()
    items = [s for s in summaries(market) if s.listing.provider.lower() == me]
    ids = {s.listing.id for s in items}
    earned = dict.fromkeys(ids, 0)
    jobs = dict.fromkeys(ids, 0)
    for job in market.jobs():
        for a in job.allocations:
            if a.listing_id in ids:
                earned[a.listing_id] += a.payout
                jobs[a.listing_id] += 1
    return [
        {
            **s.to_json(),
            "active": s.listing.active,
            "earned_wei": str(earned[s.listing.id]),
            "jobs": jobs[s.listing.id],
        }
        for s in items
    ]
