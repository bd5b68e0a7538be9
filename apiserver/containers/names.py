"""Random container names in Docker's ``adjective_surname`` style, from Berth's own word lists
(ship and harbour words and navigators, so they cannot be mistaken for Docker's)."""

from __future__ import annotations

import secrets

ADJECTIVES = (
    "able", "agile", "amber", "ample", "ardent", "azure", "balmy", "blithe", "bold", "brave", "breezy",
    "bright", "brisk", "calm", "candid", "careful", "cheerful", "clever", "cobalt", "cosmic", "crisp",
    "curious", "daring", "deft", "eager", "earnest", "easy", "fabled", "fair", "fearless", "fleet",
    "fond", "gallant", "gentle", "glad", "golden", "grand", "hardy", "hearty", "honest", "humble",
    "jolly", "keen", "kind", "lively", "loyal", "lucid", "lucky", "mellow", "merry", "mighty", "misty",
    "modest", "nimble", "noble", "patient", "placid", "plucky", "polar", "proud", "quick", "quiet",
    "rapid", "ready", "rugged", "salty", "serene", "sharp", "shiny", "silent", "silver", "sleek",
    "snug", "solid", "spry", "stable", "steady", "stoic", "stout", "sturdy", "sunny", "swift", "tidal",
    "tidy", "true", "trusty", "upbeat", "valiant", "vivid", "warm", "wary", "windy", "wise", "witty", "zesty",
)

NAVIGATORS = (
    "abel", "amundsen", "baffin", "barents", "bass", "beagle", "bering", "bougainville", "bowditch",
    "cabot", "cabral", "cartier", "champlain", "cheng", "cook", "dampier", "davis", "diaz", "drake",
    "earhart", "eriksson", "flinders", "franklin", "frobisher", "gama", "hanno", "hudson", "ibnbattuta",
    "jansz", "kupe", "laperouse", "lewis", "magellan", "maury", "mercator", "nansen", "nordenskiold",
    "orellana", "parry", "peary", "polo", "pytheas", "raleigh", "ross", "scott", "shackleton", "tasman",
    "vancouver", "verrazzano", "vespucci", "wilkes", "zheng",
)


def generate_name(retry: int = 0) -> str:
    name = f"{secrets.choice(ADJECTIVES)}_{secrets.choice(NAVIGATORS)}"
    # Like Docker, append a digit on retries so collisions resolve quickly.
    return f"{name}{secrets.randbelow(10)}" if retry else name
