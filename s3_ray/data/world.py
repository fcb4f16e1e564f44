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

GENERATOR_VERSION = "world-2"
"""world-2: short, easily copied names and one-fact sentences (a passage is ~31 tokens; world-1's
were ~77 with names of 5-9 tokens that the 135M generator often misspelled)."""

_ONSETS = ["b", "br", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st", "tr"]
_VOWELS = ["a", "e", "i", "o", "u"]
_CODAS = ["", "", "n", "r", "l", "s", "m", "d", "k"]
_FIRST = ["Anna", "Ben", "Clara", "Dan", "Eva", "Finn", "Greta", "Hugo", "Ida", "Jon", "Lena", "Max", "Nora",
          "Otto", "Paul", "Rosa", "Sam", "Tara", "Vera", "Will", "Alma", "Cora", "Emil", "Flora", "Hanna",
          "Karl", "Lars", "Mila", "Nils", "Ruth"]
_TOWN_SUFFIX = ["ford", "ton", "by", "wick", "ham", "field", "dale", "mouth", "stead", "bury"]
_CO_SUFFIX = ["Works", "Mills", "Company", "Brothers", "Foundry"]
_OCCUPATIONS = ["cartographer", "glassblower", "clockmaker", "botanist", "shipwright", "astronomer", "bookbinder",
                "physician", "surveyor", "composer", "weaver", "chemist", "architect", "engraver", "beekeeper",
                "baker"]
_PRODUCTS = ["compasses", "felt hats", "lamp oil", "pocket watches", "rope", "copper kettles", "printing presses",
             "glass lenses", "wool blankets", "tin toys", "church bells", "sailcloth", "ink", "barometers",
             "saddles"]
_MATERIALS = ["birch wood", "bronze", "bone", "cedar", "brass", "horn", "walnut", "silver"]
_INSTR_SUFFIX = ["horn", "pipe", "harp", "drum", "fiddle", "lute"]

# Distractors mention an entity (and sometimes another one) but never state a fact a question asks about.
_DISTRACT: dict[str, list[tuple[str, str]]] = {
    "person": [("Portrait of", "A portrait of {e} hangs in the town hall of {t2}."),
               ("Letters of", "Letters from {e} to {p2} were sold at auction in {y}."),
               ("Diaries mentioning", "{e} is mentioned in the diaries of {p2}.")],
    "company": [("Trade directory entry for", "{e} was listed in the {y} trade directory of {t2}."),
                ("Strike at", "A strike at {c2} spread to {e} in {y}."),
                ("Catalogue of", "An old catalogue of {e} is kept in the library of {t2}.")],
    "town": [("Chronicle of", "The {e} Chronicle was a weekly paper first printed in {y}."),
             ("Road to", "A road between {e} and {t2} was paved in {y}."),
             ("Lantern fair of", "Every autumn {e} holds a lantern fair.")],
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

    def word(self, syllables: tuple[int, int] = (2, 2), suffix: str = "") -> str:
        for _ in range(10_000):
            n = self.rng.randint(*syllables)
            w = "".join(self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) + self.rng.choice(_CODAS)
                        for _ in range(n))
            w = (w + suffix).capitalize()
            if 3 <= len(w) <= 10 and w.lower() not in self.used:
                self.used.add(w.lower())
                return w
        raise RuntimeError("name space exhausted; lower the entity counts")


def build_world(seed: int = 0, n_people: int = 420, n_companies: int = 150, n_towns: int = 120,
                n_rivers: int = 40, n_instruments: int = 40, distractors_per_entity: float = 1.5) -> World:
    """Generate entities, their lead passages and distractor passages (shuffled, ids `w00000`...)."""
    rng = random.Random(seed)
    names = _Names(rng)
    ents: dict[str, Entity] = {}

    def add(kind: str, i: int, name: str) -> Entity:
        e = Entity(key=f"{kind}:{i}", kind=kind, name=name)
        ents[e.key] = e
        return e

    regions = [names.word((2, 2)) + " Vale" for _ in range(10)]
    seas = [names.word((1, 2)) + " Sea" for _ in range(6)]
    rivers = [add("river", i, names.word((1, 2))) for i in range(n_rivers)]
    for r in rivers:
        r.attrs.update(sea=rng.choice(seas), length=str(rng.randrange(40, 900, 5)), source=rng.choice(regions))
    towns = [add("town", i, names.word((1, 1), rng.choice(_TOWN_SUFFIX))) for i in range(n_towns)]
    people = [add("person", i, f"{rng.choice(_FIRST)} {names.word((2, 2))}") for i in range(n_people)]
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
    companies = [add("company", i, f"{names.word((2, 2))} {rng.choice(_CO_SUFFIX)}") for i in range(n_companies)]
    founders = rng.sample([p for p in people if p not in mayors], n_companies)
    for c, f in zip(companies, founders):
        c.attrs.update(product=rng.choice(_PRODUCTS))
        c.links.update(founder=f.key, headquarters=rng.choice(towns).key)
        c.attrs["founded"] = str(int(f.attrs["born"]) + rng.randint(22, 50))
    instruments = [add("instrument", i, f"{names.word((2, 2)).lower()} {rng.choice(_INSTR_SUFFIX)}")
                   for i in range(n_instruments)]
    inventors = rng.sample(people, n_instruments)
    for ins, inv in zip(instruments, inventors):
        ins.attrs.update(material=rng.choice(_MATERIALS), invented=str(int(inv.attrs["born"]) + rng.randint(20, 45)))
        ins.links["inventor"] = inv.key

    def n(key: str) -> str:
        return ents[key].name

    # One fact per short sentence, the asked-for value right after the subject: a small generator
    # that restates the passage reaches the answer within its token budget.
    leads: list[tuple[str, str]] = []
    for r in rivers:
        leads.append((r.key, f"The {r.name} is a river. It flows into the {r.attrs['sea']}. "
                             f"It rises in {r.attrs['source']}."))
    for t in towns:
        leads.append((t.key, f"{t.name} is a town in {t.attrs['region']}. The river {n(t.links['river'])} flows "
                             f"through {t.name}. The mayor of {t.name} is {n(t.links['mayor'])}."))
    for p in people:
        first = p.name.split()[0]
        article = "an" if p.attrs["occupation"][0] in "aeiou" else "a"
        spouse = f" {first} was married to {n(p.links['spouse'])}." if "spouse" in p.links else ""
        leads.append((p.key, f"{p.name} was {article} {p.attrs['occupation']}. {first} was born in "
                             f"{n(p.links['birthplace'])} in {p.attrs['born']}.{spouse}"))
    for c in companies:
        leads.append((c.key, f"{c.name} makes {c.attrs['product']}. {c.name} was founded by "
                             f"{n(c.links['founder'])} in {c.attrs['founded']}. Its headquarters are in "
                             f"{n(c.links['headquarters'])}."))
    for ins in instruments:
        leads.append((ins.key, f"The {ins.name} was invented by {n(ins.links['inventor'])} in "
                               f"{ins.attrs['invented']}. It is a musical instrument made of {ins.attrs['material']}."))

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
