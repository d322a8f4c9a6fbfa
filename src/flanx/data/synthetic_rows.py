"""Built-in synthetic data: customer-service chats and small instruction tasks.

Nothing here reads a file, so `make demo` and the tests run on a bare machine.
Every row is a deterministic function of (generator, split, seed, index):
the same arguments give the same rows in the same order on any machine.

Generators (task cards pick fields from their rows):

- `chat`: a three-turn chat between a customer and an agent about one of five
  intents (delivery, refund, password, billing, cancel), always naming a
  2-digit order number, ending with a happy or unhappy customer line. Fields: `chat`,
  `summary` (at most 48 bytes, built from the same slots), `intent`,
  `order_number`, `customer`, `sentiment`, `refund` (yes/no).
- `order_total`: a one-line purchase with two prices of 1 to 5 dollars.
  Fields: `item_a`, `price_a`, `item_b`, `price_b`, `total`.

The material is small and strongly patterned so that a tiny byte-level model
(d_model 128, 2+2 layers) learns it in a few hundred CPU steps: chats are
under 150 bytes, targets under 48 bytes.
"""
from __future__ import annotations

import random

SPLIT_SIZES = {"train": 4000, "validation": 200, "test": 200}

CUSTOMERS = ("Maria", "John", "Aisha", "Chen", "Lucas", "Emma", "Omar", "Sofia",
             "Ivan", "Priya", "Noah", "Yuki", "Leo", "Nora", "Ali", "Mia")
DAYS = ("Monday", "Tuesday", "Friday", "Sunday")
INTENTS = ("delivery", "refund", "password", "billing", "cancel")

# intent -> (customer request, agent reply, summary); {o} order number, {n} name,
# {d} day, {k} days, {a} amount.
_SCRIPTS = {
    "delivery": (("Where is my order {o}?", "My order {o} has not arrived."),
                 ("It ships on {d}.", "It will arrive {d}."),
                 "{n} asked about order {o}; due {d}."),
    "refund": (("I want a refund for order {o}.", "Please refund order {o}."),
               ("Refund sent, {k} days to clear.", "Done, you get it in {k} days."),
               "{n} got a refund for order {o}."),
    "password": (("I can't log in to see order {o}.", "I forgot my password, order {o}."),
                 ("I sent a reset link by email.", "Use the reset link I just sent."),
                 "{n} got a password reset, order {o}."),
    "billing": (("I was charged twice for order {o}.", "Order {o} was billed twice."),
                ("We returned the extra ${a}.", "The extra ${a} is credited back."),
                "{n} was double billed for order {o}."),
    "cancel": (("Please cancel order {o}.", "I need to cancel order {o}."),
               ("Order {o} is cancelled.", "Done, order {o} is cancelled."),
               "{n} cancelled order {o}."),
}
_HAPPY = ("Thanks, great help!", "Perfect, thank you!", "Great, thanks a lot!")
_UNHAPPY = ("This is too slow.", "Not happy about this.", "That is really bad.")

ITEMS = ("mug", "pen", "lamp", "book", "cap", "sock", "bag", "cup", "fan", "kite")


def _rng(generator: str, split: str, seed: int) -> random.Random:
    # str seeds hash with SHA-512 inside `random`, so this is stable across runs and machines.
    return random.Random(f"flanx-synthetic:{generator}:{split}:{seed}")


def chat_row(rng: random.Random) -> dict[str, str]:
    name = rng.choice(CUSTOMERS)
    intent = rng.choice(INTENTS)
    order = str(rng.randrange(10, 100))
    slots = {"o": order, "n": name, "d": rng.choice(DAYS), "k": str(rng.randrange(2, 8)),
             "a": str(rng.randrange(5, 60))}
    asks, replies, summary = _SCRIPTS[intent]
    happy = rng.random() < 0.5
    chat = "\n".join((
        f"Customer: Hi, I'm {name}. " + rng.choice(asks).format(**slots),
        "Agent: " + rng.choice(replies).format(**slots),
        "Customer: " + rng.choice(_HAPPY if happy else _UNHAPPY),
    ))
    return {
        "chat": chat,
        "summary": summary.format(**slots),
        "intent": intent,
        "order_number": order,
        "customer": name,
        "sentiment": "positive" if happy else "negative",
        "refund": "yes" if intent == "refund" else "no",
    }


def order_total_row(rng: random.Random) -> dict[str, str]:
    item_a, item_b = rng.sample(ITEMS, 2)
    price_a, price_b = rng.randrange(1, 6), rng.randrange(1, 6)
    return {"item_a": item_a, "price_a": str(price_a), "item_b": item_b, "price_b": str(price_b),
            "total": str(price_a + price_b)}


GENERATORS = {"chat": chat_row, "order_total": order_total_row}


def generate(generator: str, split: str, num_rows: int | None = None, seed: int = 0) -> list[dict[str, str]]:
    """`num_rows` rows (default `SPLIT_SIZES[split]`) of `generator` for `split`."""
    return list(iter_rows(generator, split, num_rows, seed))


def iter_rows(generator: str, split: str, num_rows: int | None = None, seed: int = 0):
    """The rows of `generate`, lazily (the first k rows do not depend on `num_rows`)."""
    if generator not in GENERATORS:
        raise ValueError(f"unknown synthetic generator {generator!r}; known: {', '.join(sorted(GENERATORS))}")
    if num_rows is None:
        if split not in SPLIT_SIZES:
            raise ValueError(f"synthetic split {split!r} needs an explicit size (known: {', '.join(SPLIT_SIZES)})")
        num_rows = SPLIT_SIZES[split]
    rng = _rng(generator, split, seed)
    make = GENERATORS[generator]
    for _ in range(num_rows):
        yield make(rng)
