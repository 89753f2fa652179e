"""Arithmetic word problems with worked steps, solved correctly or with one plausible slip.

Each kind returns the question, a Python arithmetic expression for the answer (stored in the row so
tests can recompute it), and steps: (description given earlier values, value given earlier values).
A wrong solution replaces one step's value with a near miss and carries it through honestly.
"""

from __future__ import annotations

import random
from collections.abc import Callable

Step = tuple[Callable[[list[int]], str], Callable[[list[int]], int]]

NAMES = ["Maya", "Liam", "Sofia", "Noah", "Aisha", "Ethan", "Chloe", "Omar", "Grace", "Lucas", "Zoe", "Mateo",
         "Hannah", "Ravi", "Ella", "Jonah", "Mia", "Diego", "Nora", "Samir"]
ITEMS = ["stickers", "marbles", "pencils", "cards", "stamps", "beads", "apples", "cookies", "shells", "buttons"]


def _packs(rng: random.Random) -> tuple[str, str, list[Step]]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(3, 12), rng.randint(4, 15)
    c = rng.randint(2, a * b - 1)
    question = (f"{name} buys {a} packs of {item} with {b} {item} in each pack, then gives {c} {item} to a friend. "
                f"How many {item} does {name} have left?")
    steps = [(lambda v: f"{a} packs x {b} {item} each", lambda v: a * b),
             (lambda v: f"{v[0]} - {c} given away", lambda v: v[0] - c)]
    return question, f"{a} * {b} - {c}", steps


def _reading(rng: random.Random) -> tuple[str, str, list[Step]]:
    name = rng.choice(NAMES)
    a, b, c = rng.randint(8, 45), rng.randint(3, 14), rng.randint(5, 60)
    question = (f"{name} reads {a} pages every day for {b} days and then reads {c} pages on the weekend. "
                f"How many pages does {name} read in total?")
    steps = [(lambda v: f"{a} pages x {b} days", lambda v: a * b),
             (lambda v: f"{v[0]} + {c} weekend pages", lambda v: v[0] + c)]
    return question, f"{a} * {b} + {c}", steps


def _sharing(rng: random.Random) -> tuple[str, str, list[Step]]:
    item = rng.choice(["cookies", "grapes", "candies", "crackers", "strawberries"])
    b, share = rng.randint(3, 9), rng.randint(4, 16)
    total, c = b * share, rng.randint(1, share - 1)
    question = (f"A bowl holds {total} {item}, shared equally among {b} friends. Each friend eats {c} of their "
                f"{item} right away. How many {item} does each friend have left?")
    steps = [(lambda v: f"{total} / {b} friends", lambda v: total // b),
             (lambda v: f"{v[0]} - {c} eaten", lambda v: v[0] - c)]
    return question, f"{total} // {b} - {c}", steps


def _change(rng: random.Random) -> tuple[str, str, list[Step]]:
    name = rng.choice(NAMES)
    a, b, c = rng.randint(2, 9), rng.randint(2, 12), rng.randint(1, 9)
    d = rng.choice([50, 100]) if a * b + c < 50 else 100
    if a * b + c >= d:
        d = 200
    question = (f"{name} buys {a} notebooks at ${b} each and a pen for ${c}, paying with a ${d} bill. "
                f"How much change does {name} get, in dollars?")
    steps = [(lambda v: f"{a} notebooks x ${b}", lambda v: a * b),
             (lambda v: f"{v[0]} + ${c} pen", lambda v: v[0] + c),
             (lambda v: f"${d} - {v[1]}", lambda v: d - v[1])]
    return question, f"{d} - ({a} * {b} + {c})", steps


def _travel(rng: random.Random) -> tuple[str, str, list[Step]]:
    a, b, c, e = rng.randint(40, 95), rng.randint(2, 6), rng.randint(20, 70), rng.randint(1, 4)
    vehicle = rng.choice(["car", "bus", "train", "van"])
    question = (f"A {vehicle} travels at {a} km per hour for {b} hours, then at {c} km per hour for {e} more hours. "
                f"How many kilometers does it travel in total?")
    steps = [(lambda v: f"{a} km/h x {b} h", lambda v: a * b),
             (lambda v: f"{c} km/h x {e} h", lambda v: c * e),
             (lambda v: f"{v[0]} + {v[1]}", lambda v: v[0] + v[1])]
    return question, f"{a} * {b} + {c} * {e}", steps


def _savings(rng: random.Random) -> tuple[str, str, list[Step]]:
    name = rng.choice(NAMES)
    a, b = rng.randint(5, 40), rng.randint(4, 20)
    c = rng.randint(10, a * b - 1)
    thing = rng.choice(["a bike", "headphones", "a game", "a jacket", "concert tickets"])
    question = (f"{name} saves ${a} each week for {b} weeks and then spends ${c} on {thing}. "
                f"How many dollars does {name} have left?")
    steps = [(lambda v: f"${a} x {b} weeks", lambda v: a * b),
             (lambda v: f"{v[0]} - ${c}", lambda v: v[0] - c)]
    return question, f"{a} * {b} - {c}", steps


def _chairs(rng: random.Random) -> tuple[str, str, list[Step]]:
    a, b = rng.randint(5, 20), rng.randint(6, 18)
    c, d = rng.randint(3, a * b // 2), rng.randint(2, 25)
    place = rng.choice(["a school hall", "a theater", "a wedding tent", "a conference room"])
    question = (f"In {place} there are {a} rows of {b} chairs. Staff remove {c} chairs and later bring in {d} more. "
                f"How many chairs are there now?")
    steps = [(lambda v: f"{a} rows x {b} chairs", lambda v: a * b),
             (lambda v: f"{v[0]} - {c} removed", lambda v: v[0] - c),
             (lambda v: f"{v[1]} + {d} added", lambda v: v[1] + d)]
    return question, f"{a} * {b} - {c} + {d}", steps


def _bakery(rng: random.Random) -> tuple[str, str, list[Step]]:
    a, b = rng.randint(4, 15), rng.randint(6, 24)
    c = rng.randint(5, a * b // 2)
    d = rng.randint(1, a * b - c - 1)
    baked = rng.choice(["muffins", "bagels", "croissants", "rolls", "scones"])
    question = (f"A bakery bakes {a} trays of {b} {baked}. It sells {c} in the morning and {d} in the afternoon. "
                f"How many {baked} are left at closing?")
    steps = [(lambda v: f"{a} trays x {b}", lambda v: a * b),
             (lambda v: f"{v[0]} - {c} sold in the morning", lambda v: v[0] - c),
             (lambda v: f"{v[1]} - {d} sold in the afternoon", lambda v: v[1] - d)]
    return question, f"{a} * {b} - {c} - {d}", steps


def _ages(rng: random.Random) -> tuple[str, str, list[Step]]:
    first, second = rng.sample(NAMES, 2)
    a, b, c = rng.randint(6, 40), rng.randint(2, 15), rng.randint(2, 12)
    question = (f"{first} is {a} years old and {second} is {b} years older than {first}. "
                f"What will the sum of their ages be in {c} years?")
    steps = [(lambda v: f"{second}'s age: {a} + {b}", lambda v: a + b),
             (lambda v: f"sum now: {a} + {v[0]}", lambda v: a + v[0]),
             (lambda v: f"in {c} years: {v[1]} + 2 x {c}", lambda v: v[1] + 2 * c)]
    return question, f"{a} + ({a} + {b}) + 2 * {c}", steps


def _tickets(rng: random.Random) -> tuple[str, str, list[Step]]:
    a, b = rng.randint(9, 30), rng.randint(4, 15)
    c, d = rng.randint(1, 5), rng.randint(1, 6)
    event = rng.choice(["the zoo", "a museum", "the aquarium", "a concert", "the fair"])
    question = (f"Tickets to {event} cost ${a} for adults and ${b} for children. A family buys {c} adult and {d} "
                f"child tickets. What is the total cost in dollars?")
    steps = [(lambda v: f"{c} adults x ${a}", lambda v: c * a),
             (lambda v: f"{d} children x ${b}", lambda v: d * b),
             (lambda v: f"{v[0]} + {v[1]}", lambda v: v[0] + v[1])]
    return question, f"{c} * {a} + {d} * {b}", steps


def _fence(rng: random.Random) -> tuple[str, str, list[Step]]:
    length, width, price = rng.randint(6, 40), rng.randint(4, 25), rng.randint(3, 12)
    question = (f"A rectangular garden is {length} meters long and {width} meters wide. Fencing costs ${price} per "
                f"meter. How much does it cost to fence the whole garden?")
    steps = [(lambda v: f"perimeter: 2 x ({length} + {width})", lambda v: 2 * (length + width)),
             (lambda v: f"{v[0]} m x ${price}", lambda v: v[0] * price)]
    return question, f"2 * ({length} + {width}) * {price}", steps


def _harvest(rng: random.Random) -> tuple[str, str, list[Step]]:
    a, b, c = rng.randint(3, 12), rng.randint(4, 15), rng.randint(2, 9)
    plant = rng.choice(["tomato plants", "pepper plants", "bean plants", "strawberry plants"])
    question = (f"A farmer plants {a} rows of {b} {plant}. Each plant produces {c} baskets over the season. "
                f"How many baskets does the farmer harvest?")
    steps = [(lambda v: f"{a} rows x {b} plants", lambda v: a * b),
             (lambda v: f"{v[0]} plants x {c} baskets", lambda v: v[0] * c)]
    return question, f"{a} * {b} * {c}", steps


KINDS = [_packs, _reading, _sharing, _change, _travel, _savings, _chairs, _bakery, _ages, _tickets, _fence, _harvest]


def _slip(value: int, rng: random.Random) -> int:
    """A near miss of the kind people make: off by a little, off by ten, or two digits swapped."""
    text = str(value)
    options = [value + rng.choice([-2, -1, 1, 2]), value + rng.choice([-10, 10])]
    if len(text) >= 2 and text[-1] != text[-2]:
        options.append(int(text[:-2] + text[-1] + text[-2]))
    return max(0, rng.choice(options))


def _render(steps: list[Step], values: list[int]) -> str:
    lines = []
    for index, (describe, _) in enumerate(steps):
        lines.append(f"Step {index + 1}: {describe(values[:index])} = {values[index]}.")
    return " ".join(lines) + f" The answer is {values[-1]}."


def make_problem(rng: random.Random) -> dict:
    """One problem with its correct and wrong solutions (the wrong one differs only by one slipped step)."""
    question, expression, steps = rng.choice(KINDS)(rng)
    correct: list[int] = []
    for _, compute in steps:
        correct.append(compute(correct))
    while True:
        slipped_step = rng.randrange(len(steps))
        wrong: list[int] = []
        for index, (_, compute) in enumerate(steps):
            value = compute(wrong)
            wrong.append(_slip(value, rng) if index == slipped_step else value)
        if wrong[-1] != correct[-1] and wrong[slipped_step] != correct[slipped_step] and min(wrong) >= 0:
            break
    return {"question": question, "expression": expression, "answer": correct[-1],
            "correct_text": _render(steps, correct), "wrong_text": _render(steps, wrong), "wrong_answer": wrong[-1]}
