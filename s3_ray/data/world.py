"""A seeded fictional encyclopedia: entities with invented names, lead passages and distractors.

A small LM cannot know these facts from pre-training, so answering needs retrieval, and bridge
questions need a second, differently worded search. Deterministic for a seed (one
`random.Random(seed)`, no global state). Questions are built, and the embedded data set is
written, in `world_qa.py`: `python -m s3_ray.data.world_qa --seed 0 --out s3_ray/data/embedded`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from s3_ray.data.corpus import make_contents
from s3_ray.types import Passage

GENERATOR_VERSION = "world-1"

_ONSETS = ["b", "br", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "r", "s", "st",
           "t", "th", "v", "w", "z", "c", "sh", "tr", "ql", "y"]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ai", "ou", "ei", "y"]
_CODAS = ["", "", "n", "r", "l", "s", "th", "m", "nd", "rk", "x", "v"]
_FIRST = ["Ardis", "Belen", "Corvin", "Dalia", "Edrin", "Fenna", "Galen", "Hesper", "Isolde", "Jorin",
          "Kestra", "Lorcan", "Mirelle", "Nolwen", "Orrin", "Pella", "Quill", "Rhosyn", "Sabeth", "Tovin",
          "Ulla", "Varek", "Wenna", "Yorick", "Zelda", "Anselm", "Brisa", "Caelan", "Delphine", "Emeric"]
_TOWN_SUFFIX = ["wick", "ford", "holm", "stead", "mere", "burg", "dale", "port", "by", "ton"]
_CO_SUFFIX = ["Works", "Foundry", "Mills", "Company", "Brothers", "Trading House", "Guild", "Ironworks"]
_OCCUPATIONS = ["cartographer", "glassblower", "clockmaker", "botanist", "shipwright", "lexicographer",
                "astronomer", "bookbinder", "physician", "organ builder", "surveyor", "composer",
                "weaver", "chemist", "architect", "lacemaker", "engraver", "beekeeper"]
_PRODUCTS = ["brass compasses", "felt hats", "lamp oil", "pocket watches", "rope", "copper kettles",
             "printing presses", "glass lenses", "wool blankets", "tin toys", "rail carriages",
             "church bells", "sailcloth", "ink", "barometers", "leather saddles"]
_MATERIALS = ["birch wood", "bronze", "whalebone", "cedar", "brass", "horn", "walnut", "silver"]
_INSTR_SUFFIX = ["lute", "horn", "pipe", "harp", "drum", "fiddle"]

# Distractor templates: they mention entities but never state a fact a question asks about.
_DISTRACT: dict[str, list[tuple[str, str]]] = {
    "person": [
        ("Diaries mentioning", "{e} appears in the diaries of {p2}, who recalled a long winter evening of arguments about "
        "weather, debts and the price of salt. The diaries were later bound in {y} and kept in the "
        "archive of {t2}, where scholars still read them for their sketches of market life."),
        ("Portrait of", "A portrait long believed to show {e} hangs in the guild hall of {t2}. Restorers examined the "
        "canvas in {y} and found an older sketch beneath the paint, perhaps of {p2}. Visitors often "
        "ask about the sitter, but the hall's catalogue gives only the frame maker's name."),
        ("Letters of", "Letters exchanged between {e} and {p2} were auctioned in {y}. The bundle covers travel plans, "
        "a dispute over a borrowed horse, and praise for the bakeries of {t2}. Collectors value the "
        "letters for their handwriting more than for their content."),
    ],
    "company": [
        ("Trade directory entry for", "{e} was listed in the {y} trade directory of {t2} next to {c2}. The directory gave its "
        "delivery routes, its account number with the river ferry and the name of its clerk, {p2}, "
        "and noted a quarrel with a neighbouring warehouse over a shared yard."),
        ("Strike at", "In {y} a strike at {c2} spread briefly to {e}, whose carters stopped work for two days. "
        "Newspapers in {t2} reported the dispute at length, quoting {p2}, a union speaker, before the "
        "carters returned after a modest rise in wages."),
        ("Catalogue of", "A catalogue from {e} printed in {y} survives in the library of {t2}. Its pages show prices, "
        "engravings of warehouses and an advertisement placed by {c2}. Collectors prize the catalogue "
        "for its coloured plates rather than its text."),
    ],
    "town": [
        ("Chronicle of", "The {e} Chronicle, a weekly paper first printed in {y}, reported on markets, floods and "
        "council quarrels. Its longest running column was written by {p2}, who also covered fairs "
        "held by {c2}. Bound volumes are kept in the reading room of {t2}."),
        ("Road to", "A road between {e} and {t2} was paved in {y} after years of complaints from carters. The "
        "works were paid for in part by {c2}, and a stone marker bearing the name of {p2} still "
        "stands at the halfway inn."),
        ("Lantern fair of", "Every autumn {e} hosts a lantern fair that draws visitors from {t2}. The custom is said to "
        "date from {y}, when {p2} hung lanterns along the square to guide travellers through a fog."),
    ],
}


@dataclass
class Entity:
    """One encyclopedia entry; `attrs` hold strings, `links` hold other entities' keys."""

    key: str
    kind: str
    name: str
    attrs: dict[str, str] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)


@dataclass
class World:
    seed: int
    entities: dict[str, Entity]
    passages: list[Passage]
    lead: dict[str, str]          # entity key -> id of its lead passage

    def name(self, key: str) -> str:
        return self.entities[key].name

    def of_kind(self, kind: str) -> list[Entity]:
        return [e for e in self.entities.values() if e.kind == kind]


class _Names:
    """Unique syllable-built words; no word is reused across entity kinds."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def word(self, syllables: tuple[int, int] = (2, 3), suffix: str = "") -> str:
        for _ in range(10_000):
            n = self.rng.randint(*syllables)
            w = "".join(self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) + self.rng.choice(_CODAS)
                        for _ in range(n))
            w = (w + suffix).capitalize()
            if 4 <= len(w) <= 13 and w.lower() not in self.used:
                self.used.add(w.lower())
                return w
        raise RuntimeError("name space exhausted; lower the entity counts")


def build_world(seed: int = 0, n_people: int = 420, n_companies: int = 150, n_towns: int = 120,
                n_rivers: int = 40, n_instruments: int = 40, distractors_per_entity: float = 2.0) -> World:
    """Generate entities, their lead passages and distractor passages (shuffled, ids `w00000`...)."""
    rng = random.Random(seed)
    names = _Names(rng)
    ents: dict[str, Entity] = {}

    def add(kind: str, i: int, name: str) -> Entity:
        e = Entity(key=f"{kind}:{i}", kind=kind, name=name)
        ents[e.key] = e
        return e

    regions = [names.word((2, 2)) + " Vale" for _ in range(8)] + [names.word((2, 2)) + " March" for _ in range(6)]
    seas = [names.word((2, 2)) + " Sea" for _ in range(6)]
    rivers = [add("river", i, names.word((2, 3))) for i in range(n_rivers)]
    for r in rivers:
        r.attrs.update(sea=rng.choice(seas), length=str(rng.randrange(40, 900, 5)), source=rng.choice(regions))
    towns = [add("town", i, names.word((1, 2), rng.choice(_TOWN_SUFFIX))) for i in range(n_towns)]
    people = [add("person", i, f"{rng.choice(_FIRST)} {names.word((2, 3))}") for i in range(n_people)]
    for t in towns:
        t.attrs.update(region=rng.choice(regions), founded=str(rng.randint(900, 1700)))
        t.links.update(river=rng.choice(rivers).key)
    order = people[:]
    rng.shuffle(order)
    for a, b in zip(order[0::2][: n_people // 3], order[1::2][: n_people // 3]):
        a.links["spouse"], b.links["spouse"] = b.key, a.key
    for p in people:
        p.attrs.update(born=str(rng.randint(1790, 1910)), occupation=rng.choice(_OCCUPATIONS))
        p.links["birthplace"] = rng.choice(towns).key
    mayors = rng.sample(people, n_towns)
    for t, m in zip(towns, mayors):
        t.links["mayor"] = m.key
    companies = [add("company", i, f"{names.word((2, 3))} {rng.choice(_CO_SUFFIX)}") for i in range(n_companies)]
    founders = rng.sample([p for p in people if p not in mayors], n_companies)
    for c, f in zip(companies, founders):
        c.attrs.update(product=rng.choice(_PRODUCTS))
        c.links.update(founder=f.key, headquarters=rng.choice(towns).key)
        c.attrs["founded"] = str(int(f.attrs["born"]) + rng.randint(22, 50))
    instruments = [add("instrument", i, names.word((2, 2), rng.choice(_INSTR_SUFFIX))) for i in range(n_instruments)]
    inventors = rng.sample(people, n_instruments)
    for ins, inv in zip(instruments, inventors):
        ins.attrs.update(material=rng.choice(_MATERIALS), invented=str(int(inv.attrs["born"]) + rng.randint(20, 45)))
        ins.links["inventor"] = inv.key

    def n(key: str) -> str:
        return ents[key].name

    leads: list[tuple[str, str]] = []
    for r in rivers:
        leads.append((r.key, f"The {r.name} is a river of about {r.attrs['length']} kilometres that rises in the "
                             f"hills of {r.attrs['source']}. It empties into the {r.attrs['sea']}. Its slow lower "
                             "course is known for eel fishing, willow banks and flat-bottomed barges."))
    for t in towns:
        leads.append((t.key, f"{t.name} is a market town in {t.attrs['region']}, on the banks of the river "
                             f"{n(t.links['river'])}. Records of a settlement go back to {t.attrs['founded']}. "
                             f"The current mayor of {t.name} is {n(t.links['mayor'])}. The town is known for "
                             "its covered market and its stone bridge."))
    for p in people:
        spouse = f" {p.name.split()[0]} was married to {n(p.links['spouse'])}." if "spouse" in p.links else ""
        leads.append((p.key, f"{p.name} (born {p.attrs['born']} in {n(p.links['birthplace'])}) was a "
                             f"{p.attrs['occupation']}. Trained from an early age, {p.name.split()[0]} became "
                             f"known for careful work and a sharp temper.{spouse} Several notebooks by "
                             f"{p.name} survive in private hands."))
    for c in companies:
        leads.append((c.key, f"{c.name} is a maker of {c.attrs['product']} founded in {c.attrs['founded']} by "
                             f"{n(c.links['founder'])}. The company has its headquarters in "
                             f"{n(c.links['headquarters'])}. Its goods were once sold at fairs across the "
                             "region and are now prized by collectors."))
    for ins in instruments:
        leads.append((ins.key, f"The {ins.name.lower()} is a musical instrument made of {ins.attrs['material']}. "
                               f"It was invented in {ins.attrs['invented']} by {n(ins.links['inventor'])}. "
                               "Players hold it upright and it gives a soft, reedy tone suited to dances."))

    related = _related_names(ents)
    distract: list[tuple[str, str, str]] = []
    for e in people + companies + towns:
        count = int(distractors_per_entity) + (rng.random() < distractors_per_entity % 1)
        for prefix, tpl in rng.sample(_DISTRACT[e.kind], min(count, len(_DISTRACT[e.kind]))):
            fill = {
                "e": e.name, "y": str(rng.randint(1800, 1930)),
                "p2": _pick(rng, people, related[e.key], e.key),
                "t2": _pick(rng, towns, related[e.key], e.key),
                "c2": _pick(rng, companies, related[e.key], e.key),
            }
            distract.append((e.key, f"{prefix} {e.name}", tpl.format(**fill)))

    rows: list[tuple[str | None, str]] = [(k, make_contents(ents[k].name, text)) for k, text in leads]
    rows += [(None, make_contents(title, text)) for _, title, text in distract]
    rng.shuffle(rows)
    passages, lead = [], {}
    for i, (key, contents) in enumerate(rows):
        pid = f"w{i:05d}"
        passages.append(Passage(id=pid, contents=contents))
        if key is not None:
            lead[key] = pid
    return World(seed=seed, entities=ents, passages=passages, lead=lead)


def _related_names(ents: dict[str, Entity]) -> dict[str, set[str]]:
    """For each entity, the keys linked to it either way (kept out of its distractors)."""
    rel: dict[str, set[str]] = {k: set() for k in ents}
    for e in ents.values():
        for other in e.links.values():
            rel[e.key].add(other)
            rel[other].add(e.key)
    return rel


def _pick(rng: random.Random, pool: list[Entity], avoid: set[str], self_key: str) -> str:
    while True:
        cand = rng.choice(pool)
        if cand.key not in avoid and cand.key != self_key:
            return cand.name
