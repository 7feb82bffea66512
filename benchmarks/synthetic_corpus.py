"""A synthetic corpus with planted duplicates and known ground truth, for measuring dedup quality and speed.

Unique documents are ~200 words of grammatical English about charging, energy, transport and cities: sentences
from ~40 frames filled from a few hundred real words, so unrelated documents differ the way real ones do (a
corpus of random pseudo-words would put MiniLM's median cosine near 0.77 and make any semantic threshold
meaningless). One in three unique documents carries one of five boilerplate headers and footers (~30 words):
templates must not collapse into one cluster.

Planted, each pointing at its original (`metadata.truth`):
  exact        the same text under a new id
  edit-1/3/5/10   that percentage of words substituted, deleted or inserted (real words)
  paraphrase   synonyms swapped for ~25 % of the content words and two adjacent sentences exchanged
"""

from __future__ import annotations

import json
import random
from pathlib import Path

NOUNS = """station charger cable battery vehicle driver network grid utility tariff session connector inverter
transformer substation panel roof garage depot fleet bus truck van scooter bicycle motorway corridor city
village harbour airport warehouse factory school hospital library market office apartment neighbourhood
council operator installer engineer technician mechanic inspector planner manager customer resident
commuter tourist farmer supplier landlord tenant contractor regulator investor analyst reporter
program subsidy rebate permit contract invoice meter sensor controller firmware software update report survey
study budget forecast schedule shift weekend morning evening winter summer storm heatwave shortage surplus
outage peak demand capacity reserve storage turbine dam reservoir pipeline refinery mine quarry forest river
valley bridge tunnel junction roundabout parking kerb pavement lamp post sign barrier lane route timetable""".split()
VERBS = """installed upgraded repaired inspected replaced delayed approved rejected funded cancelled expanded
reduced doubled measured reported predicted scheduled connected disconnected monitored recorded tested
recommended required announced postponed relocated financed audited certified commissioned""".split()
ADJECTIVES = """new old busy quiet public private rural urban coastal northern southern eastern western
reliable faulty modern outdated expensive cheap efficient noisy crowded empty temporary permanent local
regional national wealthy modest careful detailed brief annual monthly weekly fast slow heavy light""".split()
PLACES = """Denver Austin Portland Chicago Atlanta Phoenix Boston Seattle Columbus Minneapolis Raleigh Tucson
Nashville Pittsburgh Sacramento Madison Albany Boise Omaha Reno Fresno Dayton Toledo Spokane Eugene Duluth""".split()
NAMES = """Alvarez Brennan Chen Dubois Eriksen Fischer Garcia Haddad Ivanova Jensen Kowalski Lindqvist Moreau
Nakamura Okafor Petrov Quinn Rossi Santos Tanaka Ueda Varga Weber Xu Yilmaz Zimmermann""".split()
FRAMES = [
    "The {adj} {noun} near {place} was {verb} after the {noun2} {verb2} in {month}.",
    "Engineers {verb} {count} {noun}s along the {adj} {noun2} outside {place}.",
    "According to {name}, the {noun} at the {adj} {noun2} will be {verb} by {month}.",
    "Residents of {place} said the {adj} {noun} was {verb} twice during the {noun2}.",
    "A {adj} {noun} costs about {price} dollars, while a {adj2} {noun2} costs nearly {price2}.",
    "The council in {place} {verb} a plan to add {count} {noun}s to every {noun2}.",
    "During the {noun} the {adj} {noun2} lost power for {count} hours.",
    "{name} argued that each {noun} should be {verb} before the {adj} {noun2} opens.",
    "In {month} the {noun} operator {verb} the {adj} {noun2} for {count} weeks.",
    "Most {noun}s in {place} are {adj}, but the {noun2} by the {noun3} is {adj2}.",
    "The {adj} report found that {count} percent of {noun}s were {verb} late.",
    "Drivers waited {count} minutes at the {adj} {noun} because the {noun2} was {verb}.",
    "Last {month} a {adj} {noun} in {place} {verb} the {noun2} without warning.",
    "The {noun} team under {name} {verb} the {adj} {noun2} and the {noun3}.",
    "A survey of {count} {noun}s showed that the {adj} {noun2} is rarely {verb}.",
    "Officials expect the {adj} {noun} to be {verb} once the {noun2} is {verb2}.",
    "The {noun2} behind the {adj} {noun} was {verb} with help from {name}.",
    "Near the {noun} in {place}, a {adj} {noun2} now serves {count} {noun3}s a day.",
    "Because the {noun} was {adj}, the {noun2} {verb} every {noun3} on the route.",
    "{name} and {name2} {verb} the {adj} {noun} in {place} this {month}.",
]
MONTHS = """January February March April May June July August September October November December""".split()
HEADERS = [
    "This note is part of the regional charging knowledge base and is reviewed every quarter by the editors.",
    "Published by the city transport office. Figures are indicative and may change without further notice.",
    "From the operator handbook, section on sites and equipment, current edition for field staff.",
    "Community newsletter: local updates on energy, transport and public works in the district.",
    "Internal summary prepared for the planning committee; do not quote without permission.",
]
FOOTERS = [
    "Questions about this note can be sent to the editors through the usual contact form.",
    "For the latest prices and opening hours, please check the operator website before travelling.",
    "All trademarks belong to their owners. Reproduction is allowed with attribution.",
    "Next issue: winter maintenance, new bus routes and the results of the spring survey.",
    "This summary reflects information available at the time of writing and is not legal advice.",
]
SYNONYMS = {
    "installed": "set up",
    "upgraded": "improved",
    "repaired": "fixed",
    "inspected": "checked",
    "replaced": "swapped out",
    "delayed": "held up",
    "approved": "accepted",
    "cancelled": "called off",
    "expanded": "enlarged",
    "reduced": "cut",
    "reported": "stated",
    "scheduled": "planned",
    "station": "site",
    "vehicle": "car",
    "driver": "motorist",
    "city": "town",
    "busy": "crowded",
    "quiet": "calm",
    "cheap": "low-cost",
    "expensive": "costly",
    "fast": "quick",
    "slow": "sluggish",
    "new": "recent",
    "old": "aging",
    "said": "stated",
    "engineers": "technicians",
    "residents": "locals",
    "officials": "authorities",
    "plan": "proposal",
    "waited": "queued",
    "found": "showed",
    "costs": "runs",
    "nearly": "almost",
    "about": "around",
    "report": "study",
    "survey": "poll",
    "during": "throughout",
    "because": "since",
    "rarely": "seldom",
}
KINDS = ("exact", "edit-1", "edit-3", "edit-5", "edit-10", "paraphrase")


def _sentence(rng: random.Random) -> str:
    values = {
        "adj": rng.choice(ADJECTIVES),
        "adj2": rng.choice(ADJECTIVES),
        "noun": rng.choice(NOUNS),
        "noun2": rng.choice(NOUNS),
        "noun3": rng.choice(NOUNS),
        "verb": rng.choice(VERBS),
        "verb2": rng.choice(VERBS),
        "place": rng.choice(PLACES),
        "name": rng.choice(NAMES),
        "name2": rng.choice(NAMES),
        "month": rng.choice(MONTHS),
        "count": rng.randint(2, 90),
        "price": rng.randint(20, 900),
        "price2": rng.randint(20, 900),
    }
    sentence = rng.choice(FRAMES).format(**values)
    return sentence[0].upper() + sentence[1:]


def unique_document(rng: random.Random, words: int = 200) -> str:
    sentences: list[str] = []
    while sum(len(s.split()) for s in sentences) < words:
        sentences.append(_sentence(rng))
    body = " ".join(sentences)
    if rng.random() < 1 / 3:
        k = rng.randrange(len(HEADERS))
        body = f"{HEADERS[k]} {body} {FOOTERS[k]}"
    return body


def edit_words(text: str, rate: float, rng: random.Random) -> str:
    """Substitute, delete or insert real words at `rate` of the word count (at least one edit)."""
    words = text.split()
    for _ in range(max(1, round(len(words) * rate))):
        i = rng.randrange(len(words))
        operation = rng.random()
        if operation < 0.5:
            words[i] = rng.choice(NOUNS + ADJECTIVES)
        elif operation < 0.75 and len(words) > 10:
            del words[i]
        else:
            words.insert(i, rng.choice(NOUNS + ADJECTIVES))
    return " ".join(words)


def paraphrase(text: str, rng: random.Random) -> str:
    sentences = [s for s in text.split(". ") if s]
    if len(sentences) > 3:
        i = rng.randrange(len(sentences) - 1)
        sentences[i], sentences[i + 1] = sentences[i + 1], sentences[i]
    out = []
    for word in ". ".join(sentences).split():
        core = word.strip(".,").lower()
        if core in SYNONYMS and rng.random() < 0.8:
            replacement = SYNONYMS[core]
            word = (
                word.lower().replace(core, replacement)
                if word[0].islower()
                else word.replace(word.strip(".,"), replacement.capitalize())
            )
        out.append(word)
    return " ".join(out)


def make_corpus(n_documents: int, seed: int = 0, duplicate_fraction: float = 0.3) -> list[dict[str, object]]:
    """n_documents records; `duplicate_fraction` of them are planted copies, spread evenly over KINDS."""
    rng = random.Random(seed)
    n_copies = int(n_documents * duplicate_fraction)
    originals = [
        {"id": f"u{i:06d}", "text": unique_document(rng), "metadata": {"truth": None}}
        for i in range(n_documents - n_copies)
    ]
    copies = []
    for k in range(n_copies):
        kind = KINDS[k % len(KINDS)]
        source = originals[rng.randrange(len(originals))]
        text = str(source["text"])
        if kind.startswith("edit-"):
            text = edit_words(text, int(kind.split("-")[1]) / 100, rng)
        elif kind == "paraphrase":
            text = paraphrase(text, rng)
        copies.append({"id": f"c{k:06d}", "text": text, "metadata": {"truth": source["id"], "kind": kind}})
    records = originals + copies
    rng.shuffle(records)
    return records


def write_corpus(path: Path, n_documents: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in make_corpus(n_documents, seed):
            handle.write(json.dumps(record) + "\n")
    return path
