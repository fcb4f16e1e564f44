"""Questions over the generated world (`world.py`): single-hop and two-hop bridge questions.

A bridge question names only the first-hop entity; its answer sits in the second-hop passage,
which never mentions that entity, so one BM25 search on the question text rarely finds it.
Every (entity, relation) pair is asked at most once, so no pair is shared between splits.

Run: `python -m s3_ray.data.world_qa --seed 0 --out s3_ray/data/embedded` (writes the embedded
data set: corpus, train/dev/test questions and manifest).
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from s3_ray.data.corpus import write_corpus
from s3_ray.data.jsonl import write_json
from s3_ray.data.qa import write_qa
from s3_ray.data.world import GENERATOR_VERSION, Entity, World, build_world
from s3_ray.types import QAItem

# relation -> (entity kind, answer getter key, whether the answer is a linked entity)
_SINGLE: dict[str, tuple[str, str]] = {
    "person.birthplace": ("person", "Where was {e} born?"),
    "person.born": ("person", "In which year was {e} born?"),
    "person.occupation": ("person", "What was the occupation of {e}?"),
    "person.spouse": ("person", "Who was {e} married to?"),
    "company.founder": ("company", "Who founded {e}?"),
    "company.headquarters": ("company", "Where is {e} headquartered?"),
    "company.product": ("company", "What does {e} make?"),
    "company.founded": ("company", "In which year was {e} founded?"),
    "town.region": ("town", "In which region is {e}?"),
    "town.river": ("town", "Which river flows through {e}?"),
    "town.mayor": ("town", "Who is the mayor of {e}?"),
    "river.sea": ("river", "Into which sea does the {e} flow?"),
    "instrument.inventor": ("instrument", "Who invented the {e}?"),
}
# (first kind, first link, second relation) -> question template
_BRIDGE: dict[tuple[str, str, str], str] = {
    ("company", "founder", "birthplace"): "In which town was the founder of {e} born?",
    ("company", "founder", "born"): "In which year was the founder of {e} born?",
    ("company", "founder", "occupation"): "What was the occupation of the founder of {e}?",
    ("company", "headquarters", "region"): "In which region is the town where {e} has its headquarters?",
    ("company", "headquarters", "mayor"): "Who is the mayor of the town where {e} is headquartered?",
    ("company", "headquarters", "river"): "Which river flows through the town where {e} is headquartered?",
    ("town", "mayor", "birthplace"): "Where was the mayor of {e} born?",
    ("town", "mayor", "born"): "In which year was the mayor of {e} born?",
    ("town", "river", "sea"): "Into which sea does the river that flows through {e} empty?",
    ("instrument", "inventor", "birthplace"): "In which town was the inventor of the {e} born?",
    ("instrument", "inventor", "occupation"): "What was the occupation of the inventor of the {e}?",
}


def answer_of(world: World, e: Entity, relation: str) -> list[str]:
    """Golden answers (with aliases) for one attribute or link of an entity."""
    if relation in e.attrs:
        value = e.attrs[relation]
        aliases = [value]
        if value.endswith((" Sea", " Vale", " March")):
            aliases.append(value.rsplit(" ", 1)[0])
        return aliases
    if relation in e.links:
        target = world.entities[e.links[relation]]
        aliases = [target.name]
        if target.kind == "person":
            aliases.append(target.name.split(" ", 1)[1])
        return aliases
    raise KeyError(f"{e.key} has no relation {relation!r}")


def candidate_questions(world: World) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """All single and bridge questions the world supports (bridge answers never in hop 1)."""
    single, bridge = [], []
    for rel, (kind, tpl) in _SINGLE.items():
        attr = rel.split(".", 1)[1]
        for e in world.of_kind(kind):
            if attr not in e.attrs and attr not in e.links:
                continue
            name = e.name.lower() if kind == "instrument" else e.name
            single.append(_row(tpl.format(e=name), answer_of(world, e, attr), "single", 1,
                               [world.lead[e.key]], (e.key, rel)))
    passages = {p.id: p.contents for p in world.passages}
    for (kind, link, rel2), tpl in _BRIDGE.items():
        for e in world.of_kind(kind):
            mid = world.entities[e.links[link]]
            answers = answer_of(world, mid, rel2)
            hop1 = passages[world.lead[e.key]].lower()
            if any(a.lower() in hop1 for a in answers):
                continue
            name = e.name.lower() if kind == "instrument" else e.name
            support = [world.lead[e.key], world.lead[mid.key]]
            bridge.append(_row(tpl.format(e=name), answers, "bridge", 2, support, (e.key, f"{link}.{rel2}")))
    return single, bridge


def _row(question: str, answers: list[str], qtype: str, hops: int, support: list[str],
         key: tuple[str, str]) -> dict[str, Any]:
    return {"question": question, "answers": answers, "type": qtype, "hops": hops, "support": support, "key": key}


def make_splits(world: World, sizes: dict[str, int] | None = None, single_frac: float = 0.4
                ) -> dict[str, list[QAItem]]:
    """Sample disjoint (entity, relation) questions into train/dev/test, shuffled per split."""
    sizes = sizes or {"train": 400, "dev": 100, "test": 200}
    rng = random.Random(world.seed + 1)
    single, bridge = candidate_questions(world)
    total = sum(sizes.values())
    n_single = round(total * single_frac)
    pick_single = _stratified(rng, single, n_single, lambda r: r["key"][1])
    pick_bridge = _stratified(rng, bridge, total - n_single, lambda r: r["key"][1])
    keys = [r["key"] for r in pick_single + pick_bridge]
    if len(set(keys)) != len(keys):
        raise RuntimeError("an (entity, relation) pair was sampled twice")
    splits: dict[str, list[QAItem]] = {}
    si = bi = 0
    for name, size in sizes.items():
        ns = round(size * single_frac)
        rows = pick_single[si:si + ns] + pick_bridge[bi:bi + size - ns]
        si, bi = si + ns, bi + size - ns
        rng.shuffle(rows)
        splits[name] = [
            QAItem(id=f"{name}-{i:04d}", question=r["question"], golden_answers=tuple(r["answers"]),
                   meta={"type": r["type"], "hops": r["hops"], "support": r["support"],
                         "relation": r["key"][1]})
            for i, r in enumerate(rows)
        ]
    return splits


def _stratified(rng: random.Random, rows: list[dict[str, Any]], n: int,
                group: Callable[[dict[str, Any]], str]) -> list[dict[str, Any]]:
    """n rows spread round-robin over relation groups, so no relation dominates a split."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(group(r), []).append(r)
    for g in groups.values():
        rng.shuffle(g)
    out: list[dict[str, Any]] = []
    names = sorted(groups)
    while len(out) < n:
        progressed = False
        for g in names:
            if groups[g] and len(out) < n:
                out.append(groups[g].pop())
                progressed = True
        if not progressed:
            raise ValueError(f"the world supports only {len(out)} questions of this type, {n} asked")
    rng.shuffle(out)
    return out


def write_embedded(out: Path, seed: int = 0) -> dict[str, Any]:
    """Generate the world and write corpus.jsonl, train/dev/test.jsonl and manifest.json."""
    world = build_world(seed)
    splits = make_splits(world)
    out = Path(out)
    counts = {"corpus": write_corpus(out / "corpus.jsonl", world.passages)}
    for name, items in splits.items():
        counts[name] = write_qa(out / f"{name}.jsonl", items)
    types = {name: {t: sum(1 for q in items if q.meta["type"] == t) for t in ("single", "bridge")}
             for name, items in splits.items()}
    manifest = {"generator": "s3_ray.data.world", "generator_version": GENERATOR_VERSION, "seed": seed,
                "counts": counts, "question_types": types, "entities": len(world.entities)}
    write_json(out / "manifest.json", manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    """Generate the world and its QA splits and write them to `--out`."""
    ap = argparse.ArgumentParser(prog="python -m s3_ray.data.world_qa",
                                 description="Generate the embedded data set: a seeded fictional encyclopedia "
                                             "(corpus.jsonl), its train/dev/test questions and manifest.json.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "embedded")
    args = ap.parse_args(argv)
    manifest = write_embedded(args.out, seed=args.seed)
    print({k: v for k, v in manifest.items() if k != "files"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
