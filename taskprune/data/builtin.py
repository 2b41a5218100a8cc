"""Built-in multiple-choice tasks, generated offline and deterministically.

- ``capital``: country <-> capital in both directions, from the data files of the
  ``countryinfo`` package, three distractors of the same kind.
- ``sentiment``: templated product and place reviews, positive or negative.
"""

from __future__ import annotations

import itertools
from collections import Counter
import json
import random
from importlib import resources
from typing import Callable

from taskprune.data.schema import Example
from taskprune.errors import TaskPruneError


def capital_pairs() -> list[tuple[str, str]]:
    """(country, capital) pairs from countryinfo's bundled JSON files, sorted and de-duplicated."""
    pairs = set()
    for entry in resources.files("countryinfo").joinpath("data").iterdir():
        if not entry.name.endswith(".json"):
            continue
        info = json.loads(entry.read_text(encoding="utf-8"))
        name, capital = info.get("name"), info.get("capital")
        if not (isinstance(name, str) and isinstance(capital, str)):
            continue  # a country with several capitals makes an ambiguous question
        name, capital = name.strip(), capital.strip()
        if name and capital and capital.lower() != name.lower():
            pairs.add((name, capital))
    # A country listed with two capitals, or a capital shared by two entries, would make an
    # ambiguous question: keep only one-to-one pairs.
    countries = Counter(c for c, _ in pairs)
    cities = Counter(k for _, k in pairs)
    return sorted((c, k) for c, k in pairs if countries[c] == 1 and cities[k] == 1)


def _with_distractors(rng: random.Random, gold: str, pool: list[str], k: int = 3) -> tuple[list[str], int]:
    distractors = rng.sample([p for p in pool if p != gold], k)
    choices = distractors + [gold]
    rng.shuffle(choices)
    return choices, choices.index(gold)


def capital(seed: int) -> list[Example]:
    rng = random.Random(seed)
    pairs = capital_pairs()
    countries = sorted({c for c, _ in pairs})
    capitals = sorted({k for _, k in pairs})
    examples = []
    for country, city in pairs:
        choices, gold = _with_distractors(rng, city, capitals)
        examples.append(Example(f"The capital city of {country} is", choices, gold, f"capital-of:{country}", country))
        choices, gold = _with_distractors(rng, country, countries)
        examples.append(Example(f"{city} is the capital city of", choices, gold, f"country-of:{city}", country))
    return examples


_NOUNS = ["movie", "restaurant", "hotel", "book", "phone", "concert", "laptop", "game", "album", "service",
          "camera", "museum", "show", "meal", "course", "app", "car", "headphones", "play", "trip"]
_POSITIVE = ["wonderful", "excellent", "delightful", "fantastic", "great", "superb", "brilliant", "lovely",
             "amazing", "enjoyable", "outstanding", "charming"]
_NEGATIVE = ["terrible", "awful", "boring", "disappointing", "dreadful", "poor", "horrible", "annoying",
             "mediocre", "frustrating", "unpleasant", "bad"]
_TEMPLATES = [
    "The {noun} was {adj}.",
    "I thought the {noun} was {adj} overall.",
    "Honestly, this {noun} is {adj}.",
    "What a {adj} {noun}!",
    "My friends and I found the {noun} {adj}.",
    "We tried the {noun} last week and it was {adj}.",
    "Everything about the {noun} felt {adj}.",
    "In short: a {adj} {noun}.",
]


def sentiment(seed: int, size: int = 640) -> list[Example]:
    rng = random.Random(seed)
    combos = [(n, a, t, label) for label, adjectives in ((0, _POSITIVE), (1, _NEGATIVE))
              for n, a, t in itertools.product(_NOUNS, adjectives, range(len(_TEMPLATES)))]
    picked = rng.sample(combos, size)
    examples = []
    for i, (noun, adj, template, label) in enumerate(picked):
        review = _TEMPLATES[template].format(noun=noun, adj=adj)
        review = review[0].upper() + review[1:]
        examples.append(Example(f"Review: {review}\nSentiment:", ["positive", "negative"], label, f"review-{i}"))
    return examples


BUILTIN: dict[str, Callable[[int], list[Example]]] = {"capital": capital, "sentiment": sentiment}


def generate(name: str, seed: int) -> list[Example]:
    if name not in BUILTIN:
        raise TaskPruneError(f"task.name: unknown built-in task {name!r}; choose one of {sorted(BUILTIN)} or set task.path")
    return BUILTIN[name](seed)
