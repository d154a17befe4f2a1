"""The load of a fault test: a few thousand mixed orders unique to the test,
published from a background thread at a set rate by a producer that retries
like a real one would (:func:`dev.publisher.publish_retrying`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import nats
from nats.js.api import PubAck
from orders_builder import encode_order_created_by_hand as encode_by_hand
from orders_builder import order as build_order

from dev.publisher import publish_retrying
from dev.servers import wait_until
from orders.domain.model import RawOrder

if TYPE_CHECKING:
    from harness import FaultStack

PUBLISH_RETRY_S = 90.0
COMPLETED = "completed"


VALID, LOW_STOCK, DECLINED, INVALID, POISON = "valid", "low-stock", "declined", "invalid", "poison"
_PRICES = (0.99, 5.00, 12.49, 19.99, 100.10)


@dataclass(frozen=True)
class Planned:
    """One order (or poison message) of the plan and what may end it."""

    key: str  # the order id; for poison, a name of our own
    kind: str
    payload: bytes
    expect: frozenset[str]  # COMPLETED or failure reasons
    quantities: tuple[tuple[str, int], ...] = ()


@dataclass
class Publication:
    planned: Planned
    msg_id: str
    seq: int | None = None
    duplicate: bool | None = None
    attempts: int = 0


class Workload:
    """A few thousand mixed orders, unique to one test, published in the background.

    About 65% valid on well-stocked SKUs, 5% on one low-stock SKU (half of them
    cannot get stock), 10% declined (total above 10000), 10% invalid, 5%
    published a second time (half under the same ``Nats-Msg-Id``, half under
    another one) and a few poison messages (garbage, no ``order_id``).
    """

    def __init__(self, stack: FaultStack, count: int = 2000, *, seed: int | None = None) -> None:
        self.stack = stack
        stack.workloads.append(self)
        self.seed = random.randrange(1 << 30) if seed is None else seed
        rng = random.Random(self.seed)
        self.tag = f"f{uuid.uuid4().hex[:8]}"
        self.skus = [f"{self.tag}-sku-{n}" for n in range(4)]
        self.low_sku = f"{self.tag}-low"
        n_poison = max(4, count // 250)
        n_dup = count // 20
        base = count - n_poison - n_dup
        n_low, n_declined, n_invalid = base * 5 // 100, base // 10, base // 10
        n_valid = base - n_low - n_declined - n_invalid
        self.low_stock = n_low // 2
        self.initial_stock = dict.fromkeys(self.skus, 1_000_000) | {self.low_sku: self.low_stock}

        plans = self._plan_orders(rng, n_valid, n_low, n_declined, n_invalid)
        plans += self._plan_poison(n_poison)
        rng.shuffle(plans)
        self.plans = {p.key: p for p in plans}
        self.publications = self._publish_some_twice(rng, plans, n_dup)

        self.published = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started_at = self.finished_at = 0.0

    def _plan_orders(
        self, rng: random.Random, n_valid: int, n_low: int, n_declined: int, n_invalid: int
    ) -> list[Planned]:
        plans: list[Planned] = []
        ids = iter(range(1_000_000))

        def new_id() -> str:
            return f"{self.tag}-{next(ids):05d}"

        for _ in range(n_valid):
            items = [(s, rng.randint(1, 3), rng.choice(_PRICES)) for s in rng.sample(self.skus, 3)]
            plans.append(self._plan(new_id(), VALID, items[: rng.randint(1, 3)], {COMPLETED}))
        for _ in range(n_low):
            items = [(self.low_sku, 1, 2.50)]
            if rng.random() < 0.5:
                items.append((rng.choice(self.skus), 1, 5.00))
            plans.append(self._plan(new_id(), LOW_STOCK, items, {COMPLETED, "OUT_OF_STOCK"}))
        for _ in range(n_declined):
            items = [(rng.choice(self.skus), rng.randint(1, 2), 10000.01)]
            plans.append(self._plan(new_id(), DECLINED, items, {"PAYMENT_DECLINED"}))
        for n in range(n_invalid):
            oid = new_id()
            payload = encode_by_hand(self._invalid(n, oid))
            plans.append(Planned(oid, INVALID, payload, frozenset({"INVALID_ORDER"})))
        return plans

    def _plan_poison(self, n_poison: int) -> list[Planned]:
        plans = []
        for n in range(n_poison):
            if n % 2:
                payload = b"\x0a\xff\xff\xff\xff\x0f not a protobuf " + f"{self.tag}-{n}".encode()
            else:  # decodable, but no order_id: nothing to report an outcome for
                raw = build_order("", [(self.skus[0], 1, 1.0)], customer_id=f"{self.tag}-{n}")
                payload = encode_by_hand(raw)
            plans.append(Planned(f"{self.tag}-poison-{n}", POISON, payload, frozenset()))
        return plans

    @staticmethod
    def _publish_some_twice(
        rng: random.Random, plans: list[Planned], n_dup: int
    ) -> list[Publication]:
        publications = [Publication(p, msg_id=p.key) for p in plans]
        orders = [p for p in plans if p.kind != POISON]
        for n, original in enumerate(rng.sample(orders, n_dup)):
            # Again, later: under the same msg id (the duplicate window drops it) or
            # under another one (the bridge must recognise the order).
            at = plans.index(original) + 1
            position = rng.randint(at, len(publications))
            msg_id = original.key if n % 2 else f"{original.key}:again"
            publications.insert(position, Publication(original, msg_id=msg_id))
        return publications

    @staticmethod
    def _plan(
        oid: str, kind: str, items: list[tuple[str, int, float]], expect: set[str]
    ) -> Planned:
        quantities: Counter[str] = Counter()
        for sku, qty, _ in items:
            quantities[sku] += qty
        return Planned(
            oid,
            kind,
            encode_by_hand(build_order(oid, items)),
            frozenset(expect),
            tuple(sorted(quantities.items())),
        )

    def _invalid(self, n: int, oid: str) -> RawOrder:
        sku = self.skus[n % len(self.skus)]
        variants = [
            lambda: build_order(oid, [(sku, 0, 1.0)]),
            lambda: build_order(oid, [(sku, 2, 1.5)], total=4.0),
            lambda: build_order(oid, [(sku, 1, 1.0)], customer_id=""),
            lambda: build_order(oid, [(sku, 1, 1.0)], currency="ZZZ"),
            lambda: build_order(oid, []),
            lambda: build_order(oid, [("", 1, 1.0)]),
        ]
        return variants[n % len(variants)]()

    @property
    def orders(self) -> list[Planned]:
        return [p for p in self.plans.values() if p.kind != POISON]

    @property
    def poison(self) -> list[Planned]:
        return [p for p in self.plans.values() if p.kind == POISON]

    def counts(self) -> Counter[str]:
        return Counter(p.kind for p in self.plans.values()) + Counter(
            duplicates=len(self.publications) - len(self.plans)
        )

    # --- publishing ---------------------------------------------------------------

    def set_stock(self) -> None:
        for sku, quantity in self.initial_stock.items():
            self.stack.pipeline.set_stock(sku, quantity)

    def start(self, rate: float = 100.0) -> None:
        """Set the stock, then publish everything at ``rate`` messages/s in the background."""
        self.set_stock()
        self.started_at = time.monotonic()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._produce(rate)), name="producer", daemon=True
        )
        self._thread.start()

    def wait_published(self, count: int, timeout: float = 120.0) -> None:
        """Until at least ``count`` publishes are acknowledged."""
        wait_until(
            lambda: self.published >= count or self._dead(),
            timeout,
            0.1,
            f"{count} publishes",
        )
        assert not self.failures, self.failures[:5]

    def join(self, timeout: float = 180.0) -> None:
        """Until every publish is acknowledged; fails if some could not be."""
        assert self._thread is not None, "start() first"
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"producer still publishing after {timeout}s"
        assert not self.failures, f"{len(self.failures)} publishes failed: {self.failures[:5]}"

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _dead(self) -> bool:
        return self._thread is not None and not self._thread.is_alive()

    async def _produce(self, rate: float) -> None:
        nc = await nats.connect(
            self.stack.nats.url,
            name="fault-producer",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
        )
        try:
            messages = [(p.msg_id, p.planned.payload) for p in self.publications]
            await publish_retrying(
                nc.jetstream(timeout=5),
                messages,
                self,
                rate=rate,
                retry_for=PUBLISH_RETRY_S,
                stopped=self._stop.is_set,
            )
        except Exception as exc:
            self.failures.append(f"producer crashed: {exc!r}")
        finally:
            self.finished_at = time.monotonic()
            with contextlib.suppress(Exception):
                await nc.close()

    # --- dev.publisher.Receipts: what happened to each publication -------------------

    def attempted(self, n: int) -> None:
        self.publications[n].attempts += 1

    def acked(self, n: int, ack: PubAck) -> None:
        publication = self.publications[n]
        publication.seq, publication.duplicate = ack.seq, ack.duplicate
        self.published += 1

    def failed(self, n: int, error: Exception) -> None:
        self.failures.append(f"{self.publications[n].msg_id}: {error!r}")
