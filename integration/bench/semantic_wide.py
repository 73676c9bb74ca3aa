"""Near-duplicate prompts built differently from semantic_bench.py's four kinds, from
two corpora: the policy is chosen on one (``chatterbot``: the Q&A corpus the
thresholds were first set on) and reported on the other (``pydocs``: Python's own
language reference, ``pydoc_data.topics``, which ships with every CPython).

Kinds (a source prompt, run first, and a target, run after it):
  ids_start         a ticket number and a customer name on the first line, then the
                    instruction, a long shared document and the same question
  ids_middle        the same identifiers between the two halves of the document
  ids_end           the same identifiers after the document, before the question
  ids_asked         identifiers on the first line and a question that asks for them
                    (serving the source's KV for them answers with the source's
                    customer: the check that nothing of one request leaks into another)
  reworded_instruction  another wording of the instruction before the same document
  truncated_history the document's first unit dropped (a chat window that slid:
                    every later token shifted, nothing substituted)

Names, numbers and instruction wordings are not those of semantic_bench.py.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

KINDS = ["ids_start", "ids_middle", "ids_end", "ids_asked", "reworded_instruction", "truncated_history"]
CORPORA = ["chatterbot", "pydocs"]
NAMES = ["Maria Rossi", "Tomasz Nowak", "Aisha Bello", "Kenji Watanabe", "Sofia Lindqvist", "Pedro Alves",
         "Nadia Petrova", "Oliver Brown", "Yusuf Demir", "Chloe Dubois", "Rahul Mehta", "Eva Horvath"]
INSTRUCTIONS = [
    ("Read the text below and answer the question at the end.",
     "Answer the final question using only the following text."),
    ("Use the reference material that follows to answer the question.",
     "The question at the bottom must be answered from the material below."),
    ("Here is some documentation. Answer the question after it in one sentence.",
     "Below is documentation; reply to the closing question with a single sentence."),
]


def chatterbot_units(corpus: Path) -> list[list[str]]:
    """Documents as lists of units: the Q&A pairs of one category each (a pair
    written as semantic_bench.refs writes it)."""
    from semantic_bench import load_categories, refs

    return [[refs([p]) for p in pairs] for _, pairs in sorted(load_categories(corpus).items())]


def pydocs_units() -> list[list[str]]:
    """Documents as lists of paragraphs: consecutive windows of 8 to 12 paragraphs
    (about 3,000 characters at most) of the language reference topics."""
    import pydoc_data.topics as t

    docs = []
    for name in sorted(t.topics):
        paras = [p.strip() for p in t.topics[name].split("\n\n") if p.strip()]
        window, size = [], 0
        for p in paras:
            if window and (size + len(p) > 3000 or len(window) == 12):
                if len(window) >= 8:
                    docs.append(window)
                window, size = [], 0
            window.append(p)
            size += len(p)
        if len(window) >= 8:
            docs.append(window)
    return docs


def workload(corpus: str, n: int, chatterbot: Path | None = None, seed: int = 1) -> list[dict]:
    """``n`` pairs per kind from one corpus; each item has kind, corpus, source, target.
    Every pair has a document, names and numbers of its own: no two pairs share
    more than the instruction (checked), so a hit can only come from a pair's own
    source."""
    rng = random.Random(f"{corpus}-{seed}")
    docs = chatterbot_units(chatterbot) if corpus == "chatterbot" else pydocs_units()
    order = list(range(len(docs)))
    rng.shuffle(order)
    items = []
    for i in range(n):
        for k, kind in enumerate(KINDS):
            slot = i * len(KINDS) + k
            units = docs[order[slot % len(docs)]]
            if corpus == "chatterbot":
                units = rng.sample(units, min(20, len(units)))
                question = rng.choice(units).split("\n")[0].removeprefix("Q: ")
            else:
                question = "What does the text above explain?"
            items.append(dict(kind=kind, corpus=corpus, **pair(kind, units, question, slot, rng)))
    check_disjoint(items)
    return items


def pair(kind: str, units: list[str], question: str, slot: int, rng: random.Random) -> dict:
    """The source and target prompts of one pair of ``kind``."""
    doc = "\n\n".join(units)
    half = len(units) // 2
    first, second = "\n\n".join(units[:half]), "\n\n".join(units[half:])
    a, b = rng.sample(NAMES, 2)
    na, nb = rng.randrange(10**5, 10**6), rng.randrange(10**5, 10**6)
    ia, ib = INSTRUCTIONS[slot % len(INSTRUCTIONS)]
    ask = f"\n\nQuestion: {question}\nAnswer:"

    def ids(name: str, num: int) -> str:
        return f"Ticket {num} from {name}."

    make = {
        "ids_start": lambda nm, nu: f"{ids(nm, nu)}\n{ia}\n\n{doc}{ask}",
        "ids_middle": lambda nm, nu: f"{ia}\n\n{first}\n\n({ids(nm, nu)})\n\n{second}{ask}",
        "ids_end": lambda nm, nu: f"{ia}\n\n{doc}\n\n{ids(nm, nu)}{ask}",
        "ids_asked": lambda nm, nu: f"{ids(nm, nu)}\n{ia}\n\n{doc}\n\n"
                                    "Question: What is the customer's name and the ticket number?\nAnswer:",
    }
    if kind in make:
        return {"source": make[kind](a, na), "target": make[kind](b, nb)}
    if kind == "reworded_instruction":
        return {"source": f"{ia}\n\n{doc}{ask}", "target": f"{ib}\n\n{doc}{ask}"}
    return {"source": f"{ia}\n\n{doc}{ask}", "target": f"{ia}\n\n" + "\n\n".join(units[1:]) + ask}


def check_disjoint(items: list[dict], most: int = 120) -> None:
    """Raises if prompts of two different pairs share a prefix of more than ``most``
    characters (an instruction line, not a document)."""
    prompts = sorted((p, i) for i, it in enumerate(items) for p in (it["source"], it["target"]))
    for (p, i), (q, j) in zip(prompts, prompts[1:]):
        if i != j and len(os.path.commonprefix([p, q])) > most:
            raise ValueError(f"pairs {i} and {j} share a long prefix: {p[:80]!r}")


def wide(n: int, chatterbot: Path) -> list[dict]:
    """Both corpora, ``n`` pairs per kind each: chatterbot first (where a policy is
    chosen), then pydocs (where it is reported)."""
    return workload("chatterbot", n, chatterbot) + workload("pydocs", n)
