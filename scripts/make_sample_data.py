"""Writes the shipped sample corpora: EV charging (with planted duplicates and bad records) and general.

The text is assembled from hand-written sentence templates with realistic slot values, so that it has real
words and real sentence structure (embedding models and MinHash behave on it as on real documents).
Deterministic: the same seed writes byte-identical files.

    python scripts/make_sample_data.py            # rewrites data/ev_charging and data/general
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CITIES = [
    "Denver",
    "Austin",
    "Portland",
    "Chicago",
    "Atlanta",
    "Phoenix",
    "Boston",
    "Seattle",
    "Columbus",
    "Minneapolis",
    "Raleigh",
    "San Diego",
    "Nashville",
    "Pittsburgh",
    "Sacramento",
    "Madison",
]
NETWORKS = ["VoltWay", "ChargePoint", "Electrify America", "EVgo", "Blink", "GreenLane", "AmpStop", "PlugCity"]
VEHICLES = [
    "Nissan Leaf",
    "Chevrolet Bolt",
    "Hyundai Ioniq 5",
    "Kia EV6",
    "Ford Mustang Mach-E",
    "Tesla Model 3",
    "Volkswagen ID.4",
    "BMW i4",
    "Rivian R1T",
    "Polestar 2",
    "Audi Q4 e-tron",
    "Mini Cooper SE",
]
CONNECTORS = ["CCS1", "CHAdeMO", "NACS", "J1772", "Type 2", "CCS2"]

TOPICS: dict[str, dict[str, list[str]]] = {
    "pricing": {
        "titles": [
            "Charging prices in {city}",
            "What a charge costs on {network}",
            "Membership plans compared",
            "Idle fees and session fees",
            "Home versus public charging costs",
        ],
        "sentences": [
            "DC fast charging on {network} costs ${price_kwh} per kWh in {city}.",
            "A member plan on {network} costs ${monthly} per month and lowers the energy price by {discount} percent.",
            "Idle fees of ${idle} per minute start {grace} minutes after a session ends.",
            "Charging at home in {city} costs about ${home_kwh} per kWh on the standard residential rate.",
            "Adding {miles} miles of range at a public fast charger costs roughly ${session_cost}.",
            "Some stations bill per minute instead of per kWh, at ${per_min} per minute for power above 50 kW.",
            "Off-peak rates between 11 pm and 6 am can cut home charging costs by {discount} percent.",
            "A session fee of ${session_fee} is added to every charge on {network} for non-members.",
            "Workplace chargers in {city} are often free for the first {free_hours} hours.",
            "Prices at highway corridor stations are usually {premium} percent higher than at urban stations.",
            "Peak pricing on {network} applies from 4 pm to 9 pm on weekdays in {city}.",
            "Tesla Superchargers opened to other brands charge non-owners about ${price_kwh} per kWh.",
            "A full charge of the {vehicle} at home costs less than a tank of petrol in {city}.",
            "Fleet operators negotiate flat monthly contracts instead of paying per session.",
            "Credit card readers are now required on new publicly funded chargers.",
            "Parking fees in downtown {city} garages are charged on top of the energy price.",
            "Utility rebates of up to ${rebate} cover part of the cost of a home charger.",
            "Subscription plans pay off for drivers who fast charge more than {sessions} times a month.",
        ],
    },
    "technical": {
        "titles": [
            "How Level 2 charging works",
            "DC fast charging explained",
            "Charging curves and battery heat",
            "Installing a home charger",
            "Power levels of public stations",
        ],
        "sentences": [
            "Level 2 chargers deliver between {l2_low} and {l2_high} kW on a 240-volt circuit.",
            "A DC fast charger rated at {dc_kw} kW can bring a battery from 10 to 80 percent in about {dc_min} minutes.",
            "Charging power drops sharply once the battery passes {taper} percent state of charge.",
            "A home Level 2 installation usually needs a dedicated {breaker}-amp breaker.",
            "Battery preconditioning warms the pack to about {temp} degrees Celsius before a fast charge.",
            "The onboard charger limits AC charging to {obc} kW regardless of the station's rating.",
            "Cold weather can reduce the charging rate by up to {cold} percent.",
            "Liquid-cooled cables allow currents above {amps} amps without overheating.",
            "An 800-volt architecture lets the {vehicle} accept higher power at the same current.",
            "Load management shares {site_kw} kW across all chargers at a site.",
            "Level 1 charging from a household outlet adds only about {l1_miles} miles of range per hour.",
            "The charging handshake negotiates voltage and current before any power flows.",
            "Firmware updates to the station can change how fast the {vehicle} charges.",
            "A ground fault detector cuts power within milliseconds if current leaks.",
            "Three-phase AC supply allows up to 22 kW at European public stations.",
            "Battery management software balances cell voltages during the final part of a charge.",
            "Charging sessions are logged with the OCPP protocol between station and network.",
            "Heat pumps help the {vehicle} keep its battery warm in winter.",
        ],
    },
    "compatibility": {
        "titles": [
            "Which connector does my car use",
            "Adapters and plug standards",
            "Charging the {vehicle} on public networks",
            "Connector standards by region",
            "Using other networks with your car",
        ],
        "sentences": [
            "The {vehicle} uses the {connector} connector for fast charging.",
            "An adapter lets {connector} vehicles charge at {connector2} stations at up to {adapter_kw} kW.",
            "Most North American vehicles built after {year} will ship with the NACS port.",
            "The J1772 plug is the standard for Level 2 charging on non-Tesla vehicles in North America.",
            "European cars use the Type 2 connector for AC charging and CCS2 for DC charging.",
            "The {vehicle} can charge on the {network} network through the app or an RFID card.",
            "CHAdeMO is now found mainly on older Nissan Leaf models.",
            "Plug and Charge lets the {vehicle} start a session on {network} without an app.",
            "Roaming agreements let drivers use {network} stations with a single account.",
            "Older stations may need a firmware update before they accept Plug and Charge.",
            "Some apartment buildings install shared J1772 posts in the parking garage.",
            "Two-wheelers and scooters usually charge from an ordinary wall socket.",
            "The {vehicle} shows compatible stations on its navigation screen.",
            "Electric trucks are moving to the Megawatt Charging System for heavy loads.",
            "Dealers can retrofit a charge port adapter for about ${adapter_cost}.",
            "A {connector} cable cannot be plugged into a {connector2} socket without an adapter.",
            "Charging cards from {network} work at partner stations in neighbouring states.",
            "Not every adapter is certified, so the maker of the {vehicle} lists the approved ones.",
        ],
    },
    "environmental": {
        "titles": [
            "Emissions of electric driving in {city}",
            "Solar charging and the grid",
            "Battery recycling basics",
            "Lifecycle emissions compared",
            "Charging on renewable energy",
        ],
        "sentences": [
            "Charging from the grid in {city} produces about {grams} grams of CO2 per mile driven.",
            "A rooftop solar array of {solar_kw} kW can supply most of the energy a commuter needs.",
            "Battery recycling recovers over {recycle} percent of the lithium, nickel and cobalt.",
            "An electric car offsets the emissions of its battery production within about {months} months.",
            "Smart charging shifts demand to hours when wind and solar supply is highest.",
            "{network} buys renewable energy certificates to match {renew} percent of the energy it sells.",
            "Over its lifetime an electric car emits roughly {lifecycle} percent less CO2 than a petrol car.",
            "Second-life batteries store solar energy at {network} stations in {city}.",
            "Vehicle-to-grid programs pay drivers about ${v2g} per kWh returned at peak hours.",
            "Tyre and brake wear still produce particles, though regenerative braking reduces brake dust.",
            "Grid emissions in {city} have fallen by {drop} percent over the last decade.",
            "Charging overnight in {city} uses more wind power than charging in the evening.",
            "Mining for battery materials has real environmental and social costs.",
            "Sodium-ion batteries avoid cobalt and nickel altogether.",
            "Electric buses in {city} cut local air pollution along busy routes.",
            "Recycled cathode material can be used again in new battery cells.",
            "A heavier electric car wears its tyres faster than a lighter petrol car.",
            "Solar canopies over {network} stations also shade parked cars in summer.",
        ],
    },
}

GENERAL_TOPICS: dict[str, list[str]] = {
    "cooking": [
        "Bread dough rises best at about {temp} degrees Celsius.",
        "Salting pasta water to about {pct} percent gives the noodles flavour.",
        "A cast iron pan should be dried and oiled after every wash.",
        "Resting meat for {minutes} minutes keeps the juices inside.",
        "Fresh herbs are added at the end of cooking to keep their aroma.",
    ],
    "gardening": [
        "Tomatoes need at least {hours} hours of direct sun a day.",
        "Mulch keeps soil moist and suppresses weeds.",
        "Most vegetables grow well in soil with a pH between 6 and 7.",
        "Water deeply {times} times a week rather than a little every day.",
        "Compost adds nutrients and improves soil structure.",
    ],
    "travel": [
        "Booking flights about {weeks} weeks ahead often gives the best fares.",
        "A passport should be valid for six months beyond the trip.",
        "Trains between {city} and nearby cities run every {minutes} minutes.",
        "Travel insurance covers cancellations and medical costs abroad.",
        "Packing light saves checked baggage fees of about ${fee}.",
    ],
}


def _slots(rng: random.Random) -> dict[str, object]:
    return {
        "city": rng.choice(CITIES),
        "network": rng.choice(NETWORKS),
        "vehicle": rng.choice(VEHICLES),
        "connector": rng.choice(CONNECTORS),
        "connector2": rng.choice(CONNECTORS),
        "price_kwh": f"{rng.uniform(0.29, 0.69):.2f}",
        "monthly": rng.choice([4, 5, 7, 10, 13]),
        "discount": rng.choice([10, 15, 20, 25, 30]),
        "idle": f"{rng.uniform(0.2, 1.0):.2f}",
        "grace": rng.choice([5, 10, 15]),
        "home_kwh": f"{rng.uniform(0.11, 0.32):.2f}",
        "miles": rng.choice([100, 150, 200, 250]),
        "session_cost": rng.choice([12, 15, 18, 22, 27, 31]),
        "per_min": f"{rng.uniform(0.16, 0.48):.2f}",
        "session_fee": f"{rng.uniform(0.5, 2.0):.2f}",
        "free_hours": rng.choice([2, 3, 4]),
        "premium": rng.choice([10, 15, 20, 25]),
        "l2_low": rng.choice([6, 7]),
        "l2_high": rng.choice([11, 16, 19]),
        "dc_kw": rng.choice([50, 150, 250, 350]),
        "dc_min": rng.choice([18, 22, 25, 30, 40]),
        "taper": rng.choice([70, 75, 80, 85]),
        "breaker": rng.choice([40, 50, 60]),
        "temp": rng.choice([20, 25, 30, 35]),
        "obc": rng.choice([7.2, 11, 19.2]),
        "cold": rng.choice([20, 30, 40, 50]),
        "amps": rng.choice([350, 500, 600]),
        "site_kw": rng.choice([300, 600, 1000]),
        "adapter_kw": rng.choice([50, 100, 150]),
        "year": rng.choice([2025, 2026]),
        "grams": rng.choice([60, 80, 110, 140, 180]),
        "solar_kw": rng.choice([4, 6, 8, 10]),
        "recycle": rng.choice([90, 95]),
        "months": rng.choice([12, 18, 24]),
        "renew": rng.choice([50, 75, 100]),
        "lifecycle": rng.choice([40, 50, 60, 70]),
        "v2g": f"{rng.uniform(0.2, 0.6):.2f}",
        "pct": rng.choice([1, 2]),
        "minutes": rng.choice([5, 10, 15]),
        "hours": rng.choice([6, 8]),
        "times": rng.choice([2, 3]),
        "weeks": rng.choice([6, 8, 10]),
        "fee": rng.choice([30, 35, 50]),
        "rebate": rng.choice([250, 500, 750]),
        "sessions": rng.choice([3, 4, 6]),
        "l1_miles": rng.choice([3, 4, 5]),
        "adapter_cost": rng.choice([150, 230, 300]),
        "drop": rng.choice([20, 30, 40]),
    }


def _document(
    rng: random.Random, templates: list[str], n_sentences: int, used: list[set[int]] | None = None, max_shared: int = 2
) -> str:
    """Sentences drawn from a topic's templates. With `used`, the draw shares at most `max_shared` templates
    with any earlier document of the topic, so unique documents are not near copies of each other."""
    slots = _slots(rng)
    picks = rng.sample(range(len(templates)), n_sentences)
    if used is not None:
        for _ in range(500):
            if all(len(set(picks) & earlier) <= max_shared for earlier in used):
                break
            picks = rng.sample(range(len(templates)), n_sentences)
        used.append(set(picks))
    return " ".join(templates[i].format(**slots) for i in picks)


def _edit_words(rng: random.Random, text: str, n_edits: int) -> str:
    """A near copy: replace a few words with plausible other words, as a careless re-post would."""
    words = text.split()
    swaps = ["the", "a", "usually", "about", "often", "now", "also", "roughly", "typically", "many"]
    for _ in range(n_edits):
        i = rng.randrange(len(words))
        words[i] = rng.choice(swaps)
    return " ".join(words)


def ev_corpus(seed: int = 7, unique: int = 300) -> list[str]:
    """JSONL lines: unique documents, then planted exact and near duplicates, then malformed records."""
    rng = random.Random(seed)
    docs: list[dict[str, object]] = []
    categories = list(TOPICS)
    used: dict[str, list[set[int]]] = {c: [] for c in categories}
    for i in range(unique):
        category = categories[i % len(categories)]
        topic = TOPICS[category]
        slots = _slots(rng)
        title = rng.choice(topic["titles"]).format(**slots)
        body = _document(rng, topic["sentences"], rng.randint(4, 5), used[category])
        docs.append(
            {
                "id": f"ev-{i:04d}",
                "text": body,
                "metadata": {"title": title, "category": category, "source": "sample", "language": "en"},
            }
        )
    planted: list[dict[str, object]] = []
    for k, original in enumerate(rng.sample(docs, 15)):  # exact copies under a new id
        planted.append(
            {
                "id": f"ev-dup-exact-{k:02d}",
                "text": original["text"],
                "metadata": {**original["metadata"], "planted": f"exact:{original['id']}"},
            }
        )
    for k, original in enumerate(rng.sample(docs, 15)):  # near copies: one or two words changed
        text = _edit_words(rng, str(original["text"]), rng.choice([1, 2]))
        planted.append(
            {
                "id": f"ev-dup-near-{k:02d}",
                "text": text,
                "metadata": {**original["metadata"], "planted": f"near:{original['id']}"},
            }
        )
    lines = [json.dumps(d, ensure_ascii=False) for d in docs + planted]
    rng.shuffle(lines)
    malformed = [
        '{"id": "ev-bad-json", "text": "Fast charging costs',  # truncated JSON line
        json.dumps({"id": "ev-bad-empty", "text": "   ", "metadata": {"category": "pricing"}}),
        json.dumps({"id": "ev-bad-missing-text", "metadata": {"category": "technical"}}),
        json.dumps({"id": "ev-bad-type", "text": 12345, "metadata": {}}),
        json.dumps({"id": "ev-bad-metadata", "text": "Metadata must be an object.", "metadata": "pricing"}),
    ]
    for j, bad in enumerate(malformed):
        lines.insert(17 + 41 * j, bad)
    # Last, so the genuine record with this id is the one kept (the first seen wins).
    lines.append(json.dumps({"id": "ev-0000", "text": "A second record that reuses an existing id.", "metadata": {}}))
    return lines


def general_corpus(seed: int = 11, unique: int = 60) -> list[str]:
    rng = random.Random(seed)
    lines = []
    topics = list(GENERAL_TOPICS)
    for i in range(unique):
        category = topics[i % len(topics)]
        text = _document(rng, GENERAL_TOPICS[category], rng.randint(3, 5))
        lines.append(
            json.dumps({"id": f"gen-{i:03d}", "text": text, "metadata": {"category": category, "source": "sample"}})
        )
    lines.append(lines[3].replace('"gen-003"', '"gen-dup-003"'))  # one planted exact copy
    return lines


def main() -> None:
    for name, lines in (("ev_charging", ev_corpus()), ("general", general_corpus())):
        path = ROOT / "data" / name / "documents.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"wrote {len(lines)} lines to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
