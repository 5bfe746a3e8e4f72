"""Phonetically varied English prompts, generated offline.

Sentences come from a small grammar over a hand-picked vocabulary (everyday
words chosen to cover English phonemes and their neighbours). From a large pool
of candidates, a greedy selection keeps the sentences that add the most unseen
phone bigrams (as pronounced by espeak-ng), the usual way prompt sets such as
CMU ARCTIC were chosen. The result is deterministic for a seed.
"""

from __future__ import annotations

import heapq
import random
import re
import shutil
import subprocess
from collections.abc import Sequence

NAMES = """Anna Ben Carla David Eve Frank George Helen Isaac Julia Kevin Laura Martin Nora Oscar Paula
Quentin Rachel Samuel Thomas Ursula Victor Wendy Xavier Yvonne Zachary Bridget Charlotte Douglas Edith
Felix Gwen Harold Irene Joseph Kathleen Leonard Miriam Nathan Olive Patrick Ruth Stephen Theodore Vivian""".split()

# (singular, plural)
NOUNS = [tuple(p.split("/")) for p in """
apple/apples bottle/bottles bridge/bridges brother/brothers bucket/buckets cabin/cabins candle/candles
castle/castles chair/chairs cheese/cheeses chimney/chimneys church/churches clock/clocks cloud/clouds
coat/coats cousin/cousins cushion/cushions dinner/dinners doctor/doctors dog/dogs door/doors dragon/dragons
drawer/drawers engine/engines envelope/envelopes farmer/farmers feather/feathers fence/fences field/fields
fisherman/fishermen garage/garages garden/gardens giraffe/giraffes glove/gloves guitar/guitars hammer/hammers
horse/horses island/islands jacket/jackets jewel/jewels journey/journeys judge/judges kettle/kettles
kitchen/kitchens ladder/ladders lantern/lanterns leather/leathers letter/letters machine/machines map/maps
measure/measures monkey/monkeys mountain/mountains mouse/mice neighbour/neighbours needle/needles nurse/nurses
orange/oranges owl/owls oyster/oysters painter/painters parcel/parcels pencil/pencils pillow/pillows
pleasure/pleasures pocket/pockets puzzle/puzzles queen/queens rabbit/rabbits river/rivers road/roads
sailor/sailors sausage/sausages scissors/scissors shadow/shadows sheep/sheep shoe/shoes soldier/soldiers
spoon/spoons squirrel/squirrels stove/stoves street/streets student/students sugar/sugars television/televisions
thief/thieves thumb/thumbs tiger/tigers tooth/teeth tower/towers treasure/treasures truck/trucks
umbrella/umbrellas valley/valleys village/villages violin/violins wagon/wagons wallet/wallets whale/whales
whistle/whistles window/windows wizard/wizards yacht/yachts yard/yards zebra/zebras youth/youths
vision/visions voyage/voyages badge/badges booth/booths cloth/cloths""".split()]

ADJECTIVES = """ancient bright broken careful cheerful clumsy crooked curious damp dusty eager elderly empty
enormous famous fragile frozen gentle gigantic golden greasy hollow huge icy jolly lazy little loud lovely
muddy narrow noisy old orange patient pleasant polished purple quiet rough rusty shabby sharp shiny silver
smooth soft sour splendid sticky strange sturdy thick thirsty tidy tiny ugly usual vivid warm wealthy weird
wooden worried yellow young zealous brave calm dreadful""".split()

# (base, past)
VERBS = [tuple(p.split("/")) for p in """
bring/brought buy/bought carry/carried catch/caught choose/chose clean/cleaned climb/climbed
collect/collected cover/covered deliver/delivered describe/described discover/discovered draw/drew
drop/dropped enjoy/enjoyed examine/examined fetch/fetched find/found fix/fixed follow/followed
gather/gathered grab/grabbed guard/guarded hide/hid hold/held judge/judged keep/kept kick/kicked
lift/lifted measure/measured mend/mended move/moved notice/noticed open/opened paint/painted
pack/packed polish/polished pull/pulled push/pushed reach/reached repair/repaired rescue/rescued
search/searched sell/sold shake/shook share/shared show/showed sketch/sketched smash/smashed
squeeze/squeezed steal/stole sweep/swept taste/tasted throw/threw touch/touched trust/trusted
visit/visited wash/washed watch/watched wrap/wrapped weigh/weighed borrow/borrowed""".split()]

PLACES = """near the harbour|behind the old barn|under the kitchen table|beside the frozen lake|on the top shelf
|in the garden shed|at the village fair|across the busy square|inside the yellow van|by the edge of the forest
|at the bottom of the stairs|in the attic|on the north beach|outside the post office|beneath the bridge
|in the museum|at the railway station|behind the theatre|along the muddy path|in the back of the shop
|at the zoo|through the thick fog|over the hill|inside the church|on the crowded bus""".replace("\n", "").split("|")

TIMES = """yesterday|this morning|last Thursday|every evening|at midnight|before breakfast|after the storm
|on Sunday|in the autumn|three weeks ago|at half past seven|during the winter|once a month|early in June
|late last night|on Wednesday afternoon|since February|after lunch|in August|at dawn""".replace("\n", "").split("|")

ADVERBS = """quickly slowly carefully quietly happily eagerly gently loudly nervously proudly rarely
smoothly suddenly thoroughly warmly wisely badly boldly calmly clumsily""".split()

NUMBERS = "two three four five six seven eight nine ten eleven twelve fifteen twenty thirty".split()

TEMPLATES = [
    "{Name} {past} the {adj} {noun} {place} {time}.",
    "The {adj} {noun} was {adv2} {pastp} {place}.",
    "Did {name} {base} the {noun} {time}?",
    "We should {base} the {adj} {nouns} before {time}.",
    "{Name} said that the {noun} looked {adj} {time}.",
    "Please {base} the {noun} and the {noun2} {place}.",
    "How many {nouns} did {name} {base} {time}?",
    "{Number} {adj} {nouns} were {place} {time}.",
    "The {nouns} {place} are {adj} and {adj2}.",
    "{Name} and {name2} {past} a {adj} {noun} {place}.",
    "Why would anyone {base} a {adj} {noun}?",
    "{Time}, {name} {adv} {past} the {nouns}.",
    "My {noun} is {adj}, but your {noun2} is {adj2}.",
    "Nobody knew why the {noun} {place} was so {adj}.",
    "If you {base} the {noun}, {name} will {base2} the {noun2}.",
    "There were {number} {nouns} and a {adj} {noun} {place}.",
    "{Name} {adv} {past} {number} {adj} {nouns}.",
    "Was the {noun} {place} really {adj}?",
    "The {noun} that {name} {past} {time} is {adj}.",
    "Don't {base} the {adj} {noun}, {name}!",
]

_PAST_PARTICIPLE = {"bring": "brought", "buy": "bought", "catch": "caught", "choose": "chosen", "draw": "drawn",
                    "find": "found", "hide": "hidden", "hold": "held", "keep": "kept", "sell": "sold",
                    "shake": "shaken", "show": "shown", "steal": "stolen", "sweep": "swept", "throw": "thrown"}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _fill(template: str, rng: random.Random) -> str:
    n1, n2 = rng.sample(NOUNS, 2)
    v1, v2 = rng.sample(VERBS, 2)
    a1, a2 = rng.sample(ADJECTIVES, 2)
    name1, name2 = rng.sample(NAMES, 2)
    time = rng.choice(TIMES)
    values = {
        "name": name1, "Name": name1, "name2": name2,
        "noun": n1[0], "noun2": n2[0], "nouns": n1[1],
        "adj": a1, "adj2": a2,
        "base": v1[0], "base2": v2[0], "past": v1[1], "pastp": _PAST_PARTICIPLE.get(v1[0], v1[1]),
        "place": rng.choice(PLACES), "time": time, "Time": time[0].upper() + time[1:],
        "adv": rng.choice(ADVERBS), "adv2": rng.choice(ADVERBS),
        "number": rng.choice(NUMBERS), "Number": rng.choice(NUMBERS).capitalize(),
    }
    text = template.format(**values)
    # "a" before a vowel-initial adjective or noun
    text = re.sub(r"\ba ([aeiou])", r"an \1", text)
    return text[0].upper() + text[1:]


def candidate_sentences(count: int, seed: int) -> list[str]:
    """``count`` distinct grammatical sentences (fewer only if the grammar runs out)."""
    rng = random.Random(seed)
    seen: dict[str, None] = {}
    attempts = 0
    while len(seen) < count and attempts < count * 20:
        attempts += 1
        seen.setdefault(_fill(rng.choice(TEMPLATES), rng), None)
    return list(seen)


def phonemize_words(words: Sequence[str], voice: str = "en-us") -> dict[str, list[str]]:
    """Phones of each word from espeak-ng (one process for all words)."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed; it is needed to choose phonetically varied prompts")
    words = list(dict.fromkeys(w.lower() for w in words))
    out = subprocess.run(
        ["espeak-ng", "-q", "-x", "--sep=_", "-v", voice],
        input="\n".join(words) + "\n", capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    out = [line.strip() for line in out if line.strip()]
    if len(out) != len(words):  # never expected; fall back to one call per word
        out = [subprocess.run(["espeak-ng", "-q", "-x", "--sep=_", "-v", voice, w], capture_output=True,
                              text=True, check=True).stdout.strip() for w in words]
    return {w: [p.strip("'," ) for p in line.split("_") if p.strip("',")] for w, line in zip(words, out)}


def _tokens(sentence: str) -> list[str]:
    return re.findall(r"[a-z']+", sentence.lower())


def select_prompts(candidates: Sequence[str], count: int) -> list[str]:
    """Greedy choice of ``count`` sentences maximising new phone-bigram coverage.

    Ties are broken by candidate order, so the result is deterministic.
    """
    lexicon = phonemize_words([w for s in candidates for w in _tokens(s)])
    units = []
    for s in candidates:
        phones = ["#"]
        for w in _tokens(s):
            phones += lexicon.get(w, []) + ["#"]
        units.append(set(zip(phones, phones[1:])) | {(p,) for p in phones})
    # Lazy greedy: coverage gain only shrinks as more is covered (submodular), so a
    # stale gain is an upper bound and most candidates are never re-scored.
    covered: set = set()
    chosen: list[int] = []
    heap = [(-len(u), i) for i, u in enumerate(units)]
    heapq.heapify(heap)
    while heap and len(chosen) < count:
        neg_gain, i = heapq.heappop(heap)
        gain = len(units[i] - covered)
        if heap and gain < -heap[0][0] or (heap and gain == -heap[0][0] and i > heap[0][1]):
            heapq.heappush(heap, (-gain, i))
            continue
        chosen.append(i)
        covered |= units[i]
    return [candidates[i] for i in chosen]


def bigram_coverage(sentences: Sequence[str]) -> int:
    """Number of distinct phone bigrams in ``sentences`` (a measure of variety)."""
    lexicon = phonemize_words([w for s in sentences for w in _tokens(s)])
    bigrams = set()
    for s in sentences:
        phones = ["#"] + [p for w in _tokens(s) for p in lexicon.get(w, []) + ["#"]]
        bigrams |= set(zip(phones, phones[1:]))
    return len(bigrams)


def generate_prompts(count: int = 600, seed: int = 0, pool_factor: int = 8) -> list[str]:
    """``count`` distinct, phonetically varied sentences, deterministic for ``seed``."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    return select_prompts(candidate_sentences(count * pool_factor, seed), count)
