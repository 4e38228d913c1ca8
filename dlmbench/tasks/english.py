"""The English-like grammar of dlmbench's default tasks, and its two transductions.

Sentences are present-tense clauses with number agreement (features compiled into the
nonterminals: ``NP_sg``/``VP_sg`` vs ``NP_pl``/``VP_pl``), attributive adjectives,
locative PPs on nouns, adverbial PPs on verb phrases, subject relative clauses
(``who`` for animate nouns, ``that`` for all) and copular clauses. Word frequencies
within each class are Zipfian, as in real text. There is no semantic selection (a
table may sleep), and nouns and adjectives start with consonants so "a" is always right.

The grammar is built to be *unambiguous* (tested by comparing each sampled tree's
probability with the inside probability of its sentence), so the exact entropy of the
sentence distribution is the derivation entropy, computable in closed form:

* every noun phrase takes at most one post-modifier (a PP or a relative clause);
* a PP's object is a simple NP (no post-modifier), so PPs never stack ambiguously;
* verb-phrase PPs use their own prepositions and never appear inside relative
  clauses, so they always attach to the main verb;
* no word belongs to two categories (except ``the``/``no``, whose number the noun
  decides).

Because each sentence has one parse, a derivation tree is a function of its sentence;
so are its translation (:func:`translate`) and summary (:func:`summarize`).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

from dlmbench.tasks.pcfg import PCFG, Tree

NUMBERS = ("sg", "pl")

# (singular, plural); all nouns and adjectives start with a consonant so "a" is right
ANIMATE = [
    ("man", "men"), ("woman", "women"), ("child", "children"), ("dog", "dogs"),
    ("cat", "cats"), ("boy", "boys"), ("girl", "girls"), ("bird", "birds"),
    ("teacher", "teachers"), ("horse", "horses"), ("doctor", "doctors"),
    ("farmer", "farmers"), ("king", "kings"), ("queen", "queens"), ("baby", "babies"),
    ("mouse", "mice"), ("sailor", "sailors"), ("soldier", "soldiers"),
    ("student", "students"), ("rabbit", "rabbits"), ("fox", "foxes"),
    ("wolf", "wolves"), ("painter", "painters"), ("poet", "poets"),
    ("lawyer", "lawyers"), ("nurse", "nurses"), ("pilot", "pilots"),
    ("baker", "bakers"), ("singer", "singers"), ("dancer", "dancers"),
    ("driver", "drivers"), ("writer", "writers"), ("hunter", "hunters"),
    ("neighbor", "neighbors"), ("friend", "friends"), ("stranger", "strangers"),
    ("cow", "cows"), ("pig", "pigs"), ("goat", "goats"), ("bear", "bears"),
    ("lion", "lions"), ("tiger", "tigers"), ("monkey", "monkeys"),
    ("donkey", "donkeys"), ("duck", "ducks"), ("goose", "geese"), ("hen", "hens"),
    ("frog", "frogs"), ("snake", "snakes"), ("spider", "spiders"),
    ("turtle", "turtles"), ("parrot", "parrots"), ("camel", "camels"),
    ("zebra", "zebras"), ("rat", "rats"), ("bee", "bees"), ("puppy", "puppies"),
    ("kitten", "kittens"),
]
INANIMATE = [
    ("table", "tables"), ("book", "books"), ("house", "houses"), ("car", "cars"),
    ("box", "boxes"), ("chair", "chairs"), ("tree", "trees"), ("boat", "boats"),
    ("stone", "stones"), ("river", "rivers"), ("garden", "gardens"),
    ("window", "windows"), ("door", "doors"), ("bridge", "bridges"),
    ("tower", "towers"), ("road", "roads"), ("hill", "hills"), ("field", "fields"),
    ("lamp", "lamps"), ("cup", "cups"), ("bottle", "bottles"), ("basket", "baskets"),
    ("letter", "letters"), ("picture", "pictures"), ("clock", "clocks"),
    ("bell", "bells"), ("coin", "coins"), ("key", "keys"), ("ring", "rings"),
    ("hat", "hats"), ("coat", "coats"), ("shoe", "shoes"), ("bag", "bags"),
    ("bed", "beds"), ("wall", "walls"), ("roof", "roofs"), ("fence", "fences"),
    ("gate", "gates"), ("wagon", "wagons"), ("train", "trains"), ("ship", "ships"),
    ("candle", "candles"), ("mirror", "mirrors"), ("pillow", "pillows"),
    ("blanket", "blankets"), ("jar", "jars"), ("bucket", "buckets"),
    ("barrel", "barrels"), ("rope", "ropes"), ("wheel", "wheels"), ("drum", "drums"),
    ("flag", "flags"), ("map", "maps"), ("pencil", "pencils"), ("pot", "pots"),
    ("plate", "plates"), ("bowl", "bowls"), ("spoon", "spoons"),
    ("knife", "knives"), ("leaf", "leaves"), ("shelf", "shelves"),
]
# (3rd person singular, plural)
INTRANSITIVE = [
    ("sleeps", "sleep"), ("runs", "run"), ("laughs", "laugh"), ("sings", "sing"),
    ("smiles", "smile"), ("jumps", "jump"), ("waits", "wait"), ("falls", "fall"),
    ("cries", "cry"), ("swims", "swim"), ("sits", "sit"), ("walks", "walk"),
    ("dances", "dance"), ("arrives", "arrive"), ("vanishes", "vanish"),
    ("shouts", "shout"), ("sneezes", "sneeze"), ("rests", "rest"),
    ("wanders", "wander"), ("yawns", "yawn"), ("whistles", "whistle"),
    ("trembles", "tremble"), ("snores", "snore"), ("hides", "hide"),
]
TRANSITIVE = [
    ("sees", "see"), ("likes", "like"), ("chases", "chase"), ("finds", "find"),
    ("follows", "follow"), ("watches", "watch"), ("helps", "help"), ("loves", "love"),
    ("carries", "carry"), ("pushes", "push"), ("holds", "hold"), ("hates", "hate"),
    ("pulls", "pull"), ("kicks", "kick"), ("paints", "paint"), ("visits", "visit"),
    ("greets", "greet"), ("admires", "admire"), ("fears", "fear"), ("knows", "know"),
    ("remembers", "remember"), ("calls", "call"), ("touches", "touch"),
    ("washes", "wash"), ("moves", "move"), ("bites", "bite"), ("catches", "catch"),
    ("feeds", "feed"), ("drops", "drop"), ("breaks", "break"), ("builds", "build"),
    ("buys", "buy"), ("sells", "sell"),
]
ADJECTIVES = [
    "big", "small", "young", "happy", "red", "little", "good", "tall", "black",
    "white", "sad", "green", "brown", "quiet", "new", "clever", "lazy", "brave",
    "strong", "tiny", "noisy", "gentle", "heavy", "pretty", "hungry", "dirty", "clean",
    "wooden", "broken", "shiny", "soft", "warm", "cold", "wet", "dry", "famous",
    "friendly", "sleepy", "busy", "rich", "poor", "strange", "yellow", "blue",
]
PREP_NOUN = ["on", "in", "with", "near", "under", "behind", "beside", "above", "below",
             "inside"]
PREP_VERB = ["after", "before", "during", "without", "despite", "until"]
ADVERBS = ["often", "quickly", "slowly", "never", "always", "suddenly", "quietly",
           "sometimes", "usually", "rarely", "happily"]
DETERMINERS = {
    "sg": [("the", 0.5), ("a", 0.3), ("this", 0.07), ("every", 0.05), ("each", 0.04),
           ("no", 0.04)],
    "pl": [("the", 0.5), ("some", 0.12), ("these", 0.08), ("those", 0.06),
           ("many", 0.07), ("two", 0.06), ("three", 0.04), ("several", 0.04),
           ("no", 0.03)],
}
COPULA = {"sg": "is", "pl": "are"}

# structural probabilities, tuned for a mean of ~9 words and a light tail
P_SUBJECT_SG = 0.55
P_BARE_PLURAL = 0.2  # plural NPs without a determiner ("dogs sleep")
P_ANIMATE = 0.5
NP_MODIFIER = {"none": 0.64, "pp": 0.2, "rc": 0.16}
P_ADJ = 0.4  # a noun gets an adjective phrase
P_MORE_ADJ = 0.2  # the phrase gets one more adjective
VERB_FRAME = {"intr": 0.24, "tr": 0.65, "cop": 0.11}
P_ADVERB = 0.15
P_VP_PP = 0.35
P_WHO = 0.5  # animate relative clauses: "who" vs "that"


def zipf(n: int, s: float = 1.0, offset: float = 2.0) -> list[float]:
    """Zipf-Mandelbrot weights ``1/(rank+offset)^s``, normalised: a few frequent words."""
    w = [1.0 / (k + offset) ** s for k in range(n)]
    total = sum(w)
    return [x / total for x in w]


def _rules() -> list[tuple[str, tuple[str, ...], float]]:
    rules: list[tuple[str, tuple[str, ...], float]] = []

    def add(lhs: str, rhs: str, p: float) -> None:
        rules.append((lhs, tuple(rhs.split()), p))

    def lexical(lhs: str, words: list[str], probs: list[float] | None = None) -> None:
        for w, p in zip(words, probs or zipf(len(words))):
            rules.append((lhs, (w,), p))

    add("S", "NP_sg VP_sg", P_SUBJECT_SG)
    add("S", "NP_pl VP_pl", 1 - P_SUBJECT_SG)
    for k, n in enumerate(NUMBERS):
        det = 1.0 - (P_BARE_PLURAL if n == "pl" else 0.0)
        for anim, pa in (("a", P_ANIMATE), ("i", 1 - P_ANIMATE)):
            nb = f"NB_{n}_{anim}"
            # full NP: (Det) N-bar (PP | RC)
            for mod, pm in NP_MODIFIER.items():
                tail = {"none": "", "pp": " PPnp", "rc": f" RC_{n}_{anim}"}[mod]
                add(f"NP_{n}", f"Det_{n} {nb}{tail}", det * pa * pm)
                if det < 1:
                    add(f"NP_{n}", f"{nb}{tail}", (1 - det) * pa * pm)
            # simple NP (object of a preposition): no post-modifier
            add(f"NPs_{n}", f"Det_{n} {nb}", det * pa)
            if det < 1:
                add(f"NPs_{n}", nb, (1 - det) * pa)
            add(nb, f"N_{n}_{anim}", 1 - P_ADJ)
            add(nb, f"AdjP N_{n}_{anim}", P_ADJ)
            nouns = ANIMATE if anim == "a" else INANIMATE
            lexical(f"N_{n}_{anim}", [pair[k] for pair in nouns])
        who = P_WHO
        add(f"RC_{n}_a", f"who VC_{n}", who)
        add(f"RC_{n}_a", f"that VC_{n}", 1 - who)
        add(f"RC_{n}_i", f"that VC_{n}", 1.0)
        words, probs = zip(*DETERMINERS[n])
        lexical(f"Det_{n}", list(words), list(probs))
        # verb phrases: the clause core VC, and VP = VC (+ adverbial PP)
        add(f"VP_{n}", f"VC_{n}", 1 - P_VP_PP)
        add(f"VP_{n}", f"VC_{n} PPvp", P_VP_PP)
        for adv, pa in (("", 1 - P_ADVERB), ("Adv ", P_ADVERB)):
            add(f"VC_{n}", f"{adv}Vin_{n}", VERB_FRAME["intr"] * pa)
            add(f"VC_{n}", f"{adv}Vtr_{n} NPo", VERB_FRAME["tr"] * pa)
        add(f"VC_{n}", f"Cop_{n} Adj", VERB_FRAME["cop"])
        lexical(f"Vin_{n}", [pair[k] for pair in INTRANSITIVE])
        lexical(f"Vtr_{n}", [pair[k] for pair in TRANSITIVE])
        lexical(f"Cop_{n}", [COPULA[n]], [1.0])
    add("NPo", "NP_sg", 0.55)
    add("NPo", "NP_pl", 0.45)
    add("NPs", "NPs_sg", 0.55)
    add("NPs", "NPs_pl", 0.45)
    add("PPnp", "Pnp NPs", 1.0)
    add("PPvp", "Pvp NPs", 1.0)
    add("AdjP", "Adj", 1 - P_MORE_ADJ)
    add("AdjP", "Adj AdjP", P_MORE_ADJ)
    lexical("Adj", ADJECTIVES)
    lexical("Pnp", PREP_NOUN)
    lexical("Pvp", PREP_VERB)
    lexical("Adv", ADVERBS)
    return rules


def vocabulary() -> list[str]:
    """Every English word of the grammar, sorted."""
    words = {w for pair in ANIMATE + INANIMATE + INTRANSITIVE + TRANSITIVE for w in pair}
    words |= set(ADJECTIVES) | set(PREP_NOUN) | set(PREP_VERB) | set(ADVERBS)
    words |= {w for dets in DETERMINERS.values() for w, _ in dets}
    words |= set(COPULA.values()) | {"who", "that"}
    return sorted(words)


@lru_cache(maxsize=1)
def english_grammar() -> PCFG:
    """The grammar (built once; it is immutable)."""
    return PCFG(_rules(), start="S", terminals=vocabulary())


# transductions ---------------------------------------------------------------------------
def category(node: Tree | str) -> str:
    """``NP_sg_a`` -> ``NP``; a word is its own category."""
    return node if isinstance(node, str) else _category(node.label)


@lru_cache(maxsize=None)
def _category(label: str) -> str:
    return label.split("_", 1)[0]


# target-language child order per category: children listed first move first, others
# keep their relative order after them (SOV, postpositions, adjectives after nouns)
_TARGET_ORDER = {
    "VP": ("PPvp",),  # adverbial first: "after the storm the dog the cat chases"
    "VC": ("NPo", "Adj", "Adv"),  # object/predicate before the verb or copula
    "NB": ("N",),  # adjectives after the noun
    "PPnp": ("NPs",),  # postpositions
    "PPvp": ("NPs",),
}
_DROP_IN_SUMMARY = frozenset({"AdjP", "PPnp", "PPvp", "RC", "Adv"})


def _syllables() -> list[str]:
    onsets = "b d f g k l m n p r s t v z sh ch".split()
    vowels = "a e i o u".split()
    return [c + v for c in onsets for v in vowels]


@lru_cache(maxsize=1)
def target_lexicon() -> dict[str, str]:
    """English word -> invented target word, one-to-one and stable.

    Each word is hashed (not enumerated) so adding a word never renames the others;
    collisions with English or earlier target words get the next hash.
    """
    sylls = _syllables()
    english = set(vocabulary())
    used: set[str] = set()
    out: dict[str, str] = {}
    for w in vocabulary():
        n_syll = 2 if len(w) <= 5 else 3
        salt = 0
        while True:
            digest = hashlib.blake2b(f"{w}/{salt}".encode(), digest_size=8).digest()
            cand = "".join(sylls[b % len(sylls)] for b in digest[:n_syll])
            if cand not in english and cand not in used:
                break
            salt += 1
        used.add(cand)
        out[w] = cand
    return out


def translate(tree: Tree) -> list[str]:
    """The target-language sentence of a derivation: reorder, then map each word."""
    lex = target_lexicon()
    out: list[str] = []

    def walk(node: Tree | str) -> None:
        if isinstance(node, str):
            out.append(lex[node])
            return
        kids = node.children
        order = _TARGET_ORDER.get(_category(node.label))
        if order:
            cats = [category(c) for c in kids]
            kids = [c for cat in order for c, k in zip(kids, cats) if k == cat] + [
                c for c, k in zip(kids, cats) if k not in order
            ]
        for c in kids:
            walk(c)

    walk(tree)
    return out


def summarize(tree: Tree) -> list[str]:
    """The core clause: the sentence without adjectives, PPs, relative clauses, adverbs.

    A predicate adjective ("is happy") is core and stays.
    """
    out: list[str] = []
    stack: list[Tree | str] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            out.append(node)
        elif category(node) not in _DROP_IN_SUMMARY:
            stack.extend(reversed(node.children))
    return out
