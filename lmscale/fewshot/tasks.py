"""Few-shot tasks: seeded generators with a held-out split, k-shot prompts, and training text.

A prompt is k demonstration lines and a query line, each a question and its answer, one per line:

    37+45=82
    12+60=72
    58+19=

Every instance is a pure function of (task, version, split, example id, seed). Its split is decided by
hashing its canonical key, so held-out instances are never emitted into training text. The key covers
what fixes the answer: the line itself for most tasks, the unordered pair for the commutative ones, the
word for unscrambling, the line with its hidden a and b for modlin_full, and the inputs alone for modlin
(every answer they can have is held out together). Demonstrations share the prompt's hidden context
(modarith's c, modlin's a and b, recall's key table) with the query, are drawn from the training split,
never repeat the query, and are nested across k: the k-shot demonstrations are a prefix of the 8-shot
ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import string
from collections.abc import Callable, Sequence
from typing import Any

EVAL_PERCENT = 10  # default share of a task's instances held out for evaluation, by hash
SHOTS = (0, 1, 2, 4, 8)  # the shot counts evaluated by default
MAX_SHOTS = max(SHOTS)
SEP = "\n"  # ends every line; the stop string of generation

# Common English words of 3 to 5 letters; anagrams of an earlier word are dropped below so that
# unscrambling has one answer.
_WORD_TEXT = """
able acid aged also area army away baby back ball band bank base bath bear beat been beer bell belt
best bird blow blue boat body bone book born boss both bowl burn bush busy cake call calm came camp
card care case cash cast cell chat chip city club coal coat code cold come cook cool copy corn cost
crew crop dark data date dawn deal dear debt deep desk diet dish door down draw drew drop drug drum
duck dust duty each earn ease east easy edge else even ever exit face fact fail fair fall farm fast
fear feed feel file fill film find fine fire firm fish five flat flow food foot form fort four free
from fuel full fund gain game gate gift girl give glad goal gold golf gone good grew grey grow gulf
hair half hall hand hang hard harm hate have head hear heat held hell help here hero high hill hire
hold hole holy home hope host hour huge hung hunt hurt idea inch iron item jack jane jean join joke
jump jury just keep kept kick kill kind king knew know lack lady laid lake land lane last late lead
left less life lift like line link list live load loan lock long look lord lose loss lost love luck
made mail main make male many mark mass meal mean meat meet menu mere milk mill mind mine miss mode
mood moon more most move much must name navy near neck need news next nice nine none nose note okay
once only open oral over pace pack page paid pain pair palm park part pass past path peak pick pink
pipe plan play plot plus poem poet pool poor port pull pure push quit race rain rank rare rate read
real rely rent rest rice rich ride ring rise risk road rock role roll roof room root rope rule rush
safe said sake sale salt same sand save seat seed seek seem seen self sell send ship shop shot show
shut sick side sign site size skin slip slow snow soft soil sold sole some song soon sort soul spot
star stay step stop such suit sure take tale talk tall tank tape task team tell tend term test text
than that them then they thin this thus till time tiny tone tour town tree trip true tune turn twin
type unit upon used user vary vast very view vote wage wait wake walk wall want warm wash wave ways
weak wear week well went were west what when whom wide wife wild will wind wine wing wire wise wish
with wood word wore work yard yeah year your zero zone cat dog sun sky red big cup hat pen box fox
owl cow pig bee ant egg ice ink jam key kit map mud net nut oak oil pan pot rat rug saw sea toy van
web wig yak zip apple beach bread chair cloud dance dream earth field flame fruit glass grass green
heart horse house light lemon money mouse music night ocean paper party peace phone piano plant
queen quiet radio river robot salad sheep shirt smile snake space spoon sport storm sugar table tiger
toast tooth train truck water whale wheel woman world
"""


def _dedupe_anagrams(words: list[str]) -> tuple[str, ...]:
    seen: set[str] = set()
    kept = []
    for w in words:
        letters = "".join(sorted(w))
        if letters not in seen and len(set(w)) > 1:
            seen.add(letters)
            kept.append(w)
    return tuple(kept)


WORDS = _dedupe_anagrams(_WORD_TEXT.split())


@dataclasses.dataclass(frozen=True)
class Instance:
    """One line: `question` (ending in its separator) and `answer`; `key` decides the split."""

    question: str
    answer: str
    key: str

    @property
    def line(self) -> str:
        return self.question + self.answer


@dataclasses.dataclass(frozen=True)
class Task:
    """A seeded generator: `context` draws a prompt's hidden state, `draw` one instance given it."""

    name: str
    version: str
    kind: str  # what it tests, for the README and reports
    template: str  # the one line template, for every shot count
    draw: Callable[[random.Random, Any], Instance]
    context: Callable[[random.Random], Any] = lambda rng: None
    choices: tuple[str, ...] = ()  # every possible answer, for multiple-choice metrics
    in_context: bool = False  # the query cannot be answered without the demonstrations
    eval_percent: int = EVAL_PERCENT  # held-out share; larger for small instance spaces, so that
    # evaluation still sees many distinct queries


@dataclasses.dataclass(frozen=True)
class Example:
    """An evaluation example: its query and the 8 demonstrations whose prefixes make k-shot prompts."""

    task: str
    example_id: int
    query: Instance
    demos: tuple[Instance, ...]

    def prompt(self, shots: int) -> str:
        """The k-shot prompt: k demonstration lines, then the query's question."""
        return "".join(d.line + SEP for d in self.demos[:shots]) + self.query.question


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little")


def split_of(task: Task, inst: Instance) -> str:
    """`eval` for the held-out share of instances (by hash of the canonical key), else `train`."""
    held_out = _seed("split", task.name, task.version, inst.key) % 100 < task.eval_percent
    return "eval" if held_out else "train"


def _draw_in(task: Task, rng: random.Random, ctx: Any, split: str, avoid: set[str]) -> Instance:
    """Rejection-sample an instance of `split` whose key is not in `avoid`."""
    for _ in range(10_000):
        inst = task.draw(rng, ctx)
        if inst.key not in avoid and split_of(task, inst) == split:
            return inst
    raise RuntimeError(f"task {task.name}: no {split} instance found outside {len(avoid)} excluded")


def _demos(task: Task, rng: random.Random, ctx: Any, n: int, query: Instance | None) -> list[Instance]:
    """`n` distinct training-split instances sharing `ctx`, none equal to the query."""
    avoid = set() if query is None else {query.key}
    out = []
    for _ in range(n):
        inst = _draw_in(task, rng, ctx, "train", avoid)
        avoid.add(inst.key)
        out.append(inst)
    return out


def example(name: str, example_id: int, seed: int = 0, split: str = "eval") -> Example:
    """Example `example_id` of a task: a pure function of (task, version, split, id, seed)."""
    task = get(name)
    rng = random.Random(_seed("query", task.name, task.version, split, example_id, seed))
    while True:  # context and query are drawn together: some contexts have no held-out query
        ctx = task.context(rng)
        query = task.draw(rng, ctx)
        if split_of(task, query) == split:
            break
    demo_rng = random.Random(_seed("demos", task.name, task.version, example_id, seed))
    return Example(task.name, example_id, query, tuple(_demos(task, demo_rng, ctx, MAX_SHOTS, query)))


def examples(name: str, n: int, seed: int = 0, split: str = "eval") -> list[Example]:
    return [example(name, i, seed, split) for i in range(n)]


def training_document(name: str, doc_id: int, seed: int, shots: int) -> list[Instance]:
    """`shots + 1` training-split lines sharing one hidden context: a k-shot prompt with its answer."""
    task = get(name)
    rng = random.Random(_seed("train", task.name, task.version, doc_id, seed))
    return _demos(task, rng, task.context(rng), shots + 1, None)


def task_corpus(n_documents: int, seed: int, tasks: Sequence[str] | None = None, max_shots: int = MAX_SHOTS):
    """Training text as a `datasets.Dataset` with a "text" column: k-shot prompts with answers.

    Document i is a prompt of a task chosen round-robin, with k uniform in [0, max_shots]; every line
    is from the training split, so no held-out instance ever appears.
    """
    import datasets

    names = list(tasks) if tasks is not None else list(TASKS)
    for name in names:
        get(name)
    if max_shots < 0:
        from lmscale.config import ConfigError

        raise ConfigError(f"max_shots={max_shots}: must be zero or positive")
    texts = []
    for i in range(n_documents):
        name = names[i % len(names)]
        shots = random.Random(_seed("shots", seed, i)).randint(0, max_shots)
        texts.append("".join(inst.line + SEP for inst in training_document(name, i, seed, shots)))
    return datasets.Dataset.from_dict({"text": texts})


# -- the tasks -------------------------------------------------------------------------------------


def _add(digits: int) -> Callable[[random.Random, Any], Instance]:
    lo, hi = 10 ** (digits - 1), 10**digits

    def draw(rng: random.Random, ctx: Any) -> Instance:
        a, b = rng.randrange(lo, hi), rng.randrange(lo, hi)
        return Instance(f"{a}+{b}=", str(a + b), _pair_key("+", a, b))

    return draw


def _pair_key(op: str, a: int, b: int) -> str:
    """The key of a commutative instance: a+b and b+a fall in the same split."""
    return f"{min(a, b)}{op}{max(a, b)}"


def _modarith(rng: random.Random, c: int) -> Instance:
    a, b = rng.randrange(10), rng.randrange(10)
    return Instance(f"{a}@{b}=", str(a + b + c), f"{_pair_key('@', a, b)}={a + b + c}")


_RECALL_KEYS, _RECALL_TABLE = 6, 2  # keys per prompt; pairs shown on each line before its query


def _recall_table(rng: random.Random) -> dict[str, str]:
    keys = rng.sample(string.ascii_lowercase, _RECALL_KEYS)
    return {k: str(rng.randrange(10)) for k in keys}


def _recall(rng: random.Random, table: dict[str, str]) -> Instance:
    # A value directly follows its key, in pairs and query alike, so the lookup is one induction step:
    # find the key earlier in the context and copy the token after it.
    *shown, query = rng.sample(sorted(table), _RECALL_TABLE + 1)
    q = "".join(f"{k}{table[k]} " for k in shown) + query
    return Instance(q, table[query], q + table[query])


def _word(op: str, fn: Callable[[str, random.Random], tuple[str, str]], by_word: bool = False):
    """A word transform; `by_word` keys instances on the word alone (unscrambling: every scramble of a
    held-out word is held out, since the letters fix the answer)."""

    def draw(rng: random.Random, ctx: Any) -> Instance:
        word = rng.choice(WORDS)
        shown, answer = fn(word, rng)
        q = f"{op} {shown}="
        return Instance(q, answer, f"{op} {word}" if by_word else q + answer)

    return draw


def _scramble(word: str, rng: random.Random) -> tuple[str, str]:
    letters = list(word)
    while "".join(letters) == word:
        rng.shuffle(letters)
    return "".join(letters), word


def _modlin(symbol: str, p: int, coefficients: int, by_inputs: bool = False):
    """z = a*x + b*y mod p over x, y in Z_p, with the prompt's hidden a and b in range(coefficients).

    The key names the hidden a and b, since the line `f(3,4)=2` recurs under other (a, b); with
    `by_inputs` it is the inputs alone, so a held-out (x, y) is never seen under any (a, b). With few
    coefficients that matters: a model that memorised which answers follow `f(3,4)=` in training would
    otherwise have seen every answer but the held-out one, and learn against it.
    """

    def context(rng: random.Random) -> tuple[int, int]:
        return rng.randrange(coefficients), rng.randrange(coefficients)

    def draw(rng: random.Random, ab: tuple[int, int]) -> Instance:
        x, y = rng.randrange(p), rng.randrange(p)
        z = (ab[0] * x + ab[1] * y) % p
        q = f"{symbol}({x},{y})="
        return Instance(q, str(z), q if by_inputs else f"{ab[0]},{ab[1]}|{q}{z}")

    return dict(draw=draw, context=context, choices=tuple(map(str, range(p))), in_context=True)


def _repeat(rng: random.Random, ctx: Any) -> Instance:
    n = rng.randint(1, 3)
    s = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 3)))
    q = f"{n}*{s}="
    return Instance(q, s * n, q)


_ALL = [
    Task("add2", "2", "2-digit addition", "37+45=82", _add(2)),
    Task("add3", "2", "3-digit addition", "372+451=823", _add(3)),
    Task("add4", "2", "4-digit addition", "3721+4510=8231", _add(4)),
    Task(
        "modarith", "2", "modified arithmetic a@b = a+b+c, c hidden per prompt", "3@5=17", _modarith,
        context=lambda rng: rng.randint(1, 9), in_context=True,
    ),
    Task(
        "recall", "2", "associative recall: each key's digit is shown only on other lines", "c4 h1 e7",
        _recall, context=_recall_table, choices=tuple(string.digits), in_context=True,
    ),
    Task("reverse", "1", "reverse a word", "rev stone=enots", _word("rev", lambda w, r: (w, w[::-1]))),
    Task("cycle", "1", "cycle a word's letters left by one", "cyc stone=tones",
         _word("cyc", lambda w, r: (w, w[1:] + w[0]))),
    Task("unscramble", "2", "unscramble a word", "uns tnseo=stone", _word("uns", _scramble, by_word=True)),
    # Which of x and y the hidden function sums: the modular linear function a small model learns in
    # context (the CPU demo's largest model does). It holds out 30% of its 49 input pairs, each under
    # every (a, b). modlin_full draws a and b from all of Z_5: inferring them takes a modular linear
    # solve, which needs far more scale.
    Task("modlin", "2", "z = a*x + b*y mod 7, a and b in {0, 1} hidden per prompt", "f(5,4)=2",
         **_modlin("f", 7, 2, by_inputs=True), eval_percent=30),
    Task("modlin_full", "1", "z = a*x + b*y mod 5, a and b in Z_5 hidden per prompt", "g(3,4)=2",
         **_modlin("g", 5, 5)),
    Task("repeat", "1", "repeat a string n times", "3*ab=ababab", _repeat),
]  # fmt: skip
TASKS: dict[str, Task] = {t.name: t for t in _ALL}


def check_shots(shots: Sequence[int], option: str) -> None:
    """Every shot count must be at most the demonstrations an example carries; `option` names the key."""
    too_many = [k for k in shots if k > MAX_SHOTS]
    if too_many:
        from lmscale.config import ConfigError

        raise ConfigError(f"{option}: {too_many[0]} is more than the {MAX_SHOTS} demonstrations per example")


def chance(name: str, metric: str) -> float | None:
    """A metric's value for a uniform guess among the task's answers: exact match and the choice
    probability of a multiple-choice task are 1/choices, exact match of a generated answer 0; None for
    other metrics and unknown tasks."""
    task = TASKS.get(name)
    if task is None or metric not in ("exact_match", "prob_correct", "acc"):
        return None
    if task.choices:
        return 1.0 / len(task.choices)
    return 0.0 if metric == "exact_match" else None


def get(name: str) -> Task:
    if name not in TASKS:
        from lmscale.config import ConfigError

        raise ConfigError(f"unknown task '{name}'; known: {', '.join(TASKS)}")
    return TASKS[name]
