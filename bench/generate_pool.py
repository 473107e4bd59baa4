"""Write a realistic synthetic instruction pool as JSONL, for benchmarks.

    python bench/generate_pool.py bench/out/pool.jsonl -n 100000 --seed 0 [--format alpaca]

Records look like public instruction data: an instruction of 10-60 words, an optional input of up to
40 words (empty for about 60% of records, as in Alpaca), an output of 20-300 words (skewed short,
sometimes in paragraphs or a numbered list, now and then with non-ASCII characters). Words come from
a fixed list of common English words whose frequency ranks (Zipf-like) are shuffled with
`random.Random(seed)`, so the same seed always gives the same bytes.

Planted junk, as fractions of all lines:
* ~5% exact duplicate lines (a byte-for-byte copy of a recent valid line),
* ~5% same instruction (and input) with a different answer,
* ~0.5% malformed: invalid JSON (a truncated line or a Python-style dict) or a record without its output.

The file is streamed: only a bounded window of recent lines is kept for planting duplicates.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import sys
from pathlib import Path
from typing import Any

FORMATS = ("alpaca", "sharegpt", "messages")
DUPLICATE_LINE_RATE = 0.05
SAME_INSTRUCTION_RATE = 0.05
MALFORMED_RATE = 0.005
WINDOW = 5_000  # recent valid lines / instructions that duplicates are drawn from

# ~900 common English words, roughly in order of frequency; the seed perturbs the ranks locally.
WORDS = """
the of and to a in is it you that he was for on are with as his they be at one have this from or had by
hot word but what some we can out other were all there when up use your how said an each she which do
their time if will way about many then them write would like so these her long make thing see him two
has look more day could go come did number sound no most people my over know water than call first who
may down side been now find any new work part take get place made live where after back little only
round man year came show every good me give our under name very through just form sentence great think
say help low line differ turn cause much mean before move right boy old too same tell does set three
want air well also play small end put home read hand port large spell add even land here must big high
such follow act why ask men change went light kind off need house picture try us again animal point
mother world near build self earth father head stand own page should country found answer school grow
study still learn plant cover food sun four between state keep eye never last let thought city tree
cross farm hard start might story saw far sea draw left late run while press close night real life few
north open seem together next white children begin got walk example ease paper group always music
those both mark often letter until mile river car feet care second book carry took science eat room
friend began idea fish mountain stop once base hear horse cut sure watch color face wood main enough
plain girl usual young ready above ever red list though feel talk bird soon body dog family direct
pose leave song measure door product black short numeral class wind question happen complete ship area
half rock order fire south problem piece told knew pass since top whole king space heard best hour
better true during hundred five remember step early hold west ground interest reach fast verb sing
listen six table travel less morning ten simple several vowel toward war lay against pattern slow
center love person money serve appear road map rain rule govern pull cold notice voice unit power town
fine certain fly fall lead cry dark machine note wait plan figure star box noun field rest correct able
pound done beauty drive stood contain front teach week final gave green oh quick develop ocean warm
free minute strong special mind behind clear tail produce fact street inch multiply nothing course stay
wheel full force blue object decide surface deep moon island foot system busy test record boat common
gold possible plane stead dry wonder laugh thousand ago ran check game shape equate miss brought heat
snow tire bring yes distant fill east paint language among grand ball yet wave drop heart present heavy
dance engine position arm wide sail material size vary settle speak weight general ice matter circle
pair include divide syllable felt perhaps pick sudden count square reason length represent art subject
region energy hunt probable bed brother egg ride cell believe fraction forest sit race window store
summer train sleep prove lone leg exercise wall catch mount wish sky board joy winter sat written wild
instrument kept glass grass cow job edge sign visit past soft fun bright gas weather month million bear
finish happy hope flower clothe strange gone jump baby eight village meet root buy raise solve metal
whether push seven paragraph third shall held hair describe cook floor either result burn hill safe cat
century consider type law bit coast copy phrase silent tall sand soil roll temperature finger industry
value fight lie beat excite natural view sense ear else quite broke case middle kill son lake moment
scale loud spring observe child straight consonant nation dictionary milk speed method organ pay age
section dress cloud surprise quiet stone tiny climb cool design poor lot experiment bottom key iron
single stick flat twenty skin smile crease hole trade melody trip office receive row mouth exact symbol
die least trouble shout except wrote seed tone join suggest clean break lady yard rise bad blow oil
blood touch grew cent mix team wire cost lost brown wear garden equal sent choose fell fit flow fair
bank collect save control decimal gentle woman captain practice separate difficult doctor please
protect noon whose locate ring character insect caught period indicate radio spoke atom human history
effect electric expect crop modern element hit student corner party supply bone rail imagine provide
agree thus capital chair danger fruit rich thick soldier process operate guess necessary sharp wing
create neighbor wash bat rather crowd corn compare poem string bell depend meat rub tube famous dollar
stream fear sight thin triangle planet hurry chief colony clock mine tie enter major fresh search send
yellow gun allow print dead spot desert suit current lift rose continue block chart hat sell success
company subtract event particular deal swim term opposite wife shoe shoulder spread arrange camp invent
cotton born determine quart nine truck noise level chance gather shop stretch throw shine property
column molecule select wrong gray repeat require broad prepare salt nose plural anger claim continent
oxygen sugar death pretty skill women season solution magnet silver thank branch match suffix
especially fig afraid huge sister steel discuss forward similar guide experience score apple bought
led pitch coat mass card band rope slip win dream evening condition feed tool total basic smell valley
nor double seat arrive master track parent shore division sheet substance favor connect post spend
chord fat glad original share station dad bread charge proper bar offer segment slave duck instant
market degree populate chick dear enemy reply drink occur support speech nature range steam motion
path liquid log meant quotient teeth shell neck data function network model customer budget strategy
policy software database report analysis benefit risk market health climate research article
""".split()

TASK_VERBS = (
    "Explain",
    "Describe",
    "Write",
    "Summarize",
    "List",
    "Give",
    "Compare",
    "Identify",
    "Suggest",
    "Rewrite",
    "Classify",
    "Generate",
    "Outline",
    "Translate",
    "Create",
    "Evaluate",
    "Find",
    "Name",
)
QUESTION_OPENERS = ("What is", "How does", "Why do", "Which of", "How can", "What are", "When should", "Who was")
ACCENTED = (
    "café",
    "naïve",
    "résumé",
    "façade",
    "jalapeño",
    "coöperate",
    "Zürich",
    "São-Paulo",
    "crème",
    "piñata",
    "über",
    "Ångström",
)
PUNCT_EXTRAS = ("—", "“", "”", "’", "…", "°C", "€", "×")


class _Text:
    """Deterministic English-like text from a Zipf-weighted word list."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        vocab = list(dict.fromkeys(WORDS))  # drop repeats, keep order, so the list is the same on every Python
        for start in range(0, len(vocab), 25):  # shuffle ranks within windows of 25: same shape, other words
            window = vocab[start : start + 25]
            rng.shuffle(window)
            vocab[start : start + 25] = window
        self.vocab = vocab
        # Zipf-Mandelbrot weights: the commonest word is about 6% of the text, as "the" is in English
        self.cum = list(itertools.accumulate(1.0 / (rank + 3) for rank in range(len(vocab))))

    def words(self, n: int) -> list[str]:
        return self.rng.choices(self.vocab, cum_weights=self.cum, k=n)

    def sentence(self, n: int, end: str = ".") -> str:
        words = self.words(max(n, 1))
        rng = self.rng
        if n > 8 and rng.random() < 0.5:  # a comma somewhere in the middle
            i = rng.randrange(3, n - 3)
            words[i] += ","
        if rng.random() < 0.03:  # a sprinkle of non-ASCII text, as in real data
            words[rng.randrange(len(words))] = rng.choice(ACCENTED + PUNCT_EXTRAS)
        words[0] = words[0].capitalize()
        return " ".join(words) + end

    def prose(self, n_words: int, *, sentences: tuple[int, int] = (6, 22)) -> list[str]:
        """Sentences totalling about n_words words."""
        out, left = [], n_words
        while left > 0:
            k = min(left, self.rng.randint(*sentences))
            if left - k < 3:  # no stub sentence at the end
                k = left
            out.append(self.sentence(k))
            left -= k
        return out


def _skewed(rng: random.Random, low: int, high: int, median: float) -> int:
    """An integer in [low, high], log-normally skewed towards the short end."""
    import math

    while True:
        v = int(round(rng.lognormvariate(math.log(median), 0.6)))
        if low <= v <= high:
            return v


def _instruction(text: _Text) -> str:
    rng = text.rng
    n = _skewed(rng, 10, 60, 22)
    if rng.random() < 0.3:
        opener = rng.choice(QUESTION_OPENERS)
        body = text.sentence(n - len(opener.split()), end="?")
        return f"{opener} {body[0].lower()}{body[1:]}"
    verb = rng.choice(TASK_VERBS)
    k = rng.randint(8, 20)
    k = n - 1 if n - 1 - k < 3 else k  # no stub sentence after the first
    first = text.sentence(k)
    rest = n - 1 - k
    tail = (" " + " ".join(text.prose(rest))) if rest >= 3 else ""
    return f"{verb} {first[0].lower()}{first[1:]}{tail}"


def _input(text: _Text) -> str:
    rng = text.rng
    if rng.random() < 0.6:
        return ""
    return " ".join(text.prose(rng.randint(1, 40), sentences=(3, 15)))


def _output(text: _Text) -> str:
    rng = text.rng
    n = _skewed(rng, 20, 300, 90)
    shape = rng.random()
    if shape < 0.15 and n >= 30:  # a numbered list after a lead-in sentence
        lead = text.sentence(rng.randint(6, 12), end=":")
        items, left, i = [], n - len(lead.split()), 1
        while left > 0:
            k = min(left, rng.randint(5, 18))
            items.append(f"{i}. {text.sentence(k - 1) if k > 1 else text.sentence(1)}")  # "1." counts as a word
            left -= k
            i += 1
        return lead + "\n" + "\n".join(items)
    sentences = text.prose(n)
    if shape < 0.5 and len(sentences) > 3:  # paragraphs
        paras, cur = [], []
        for s in sentences:
            cur.append(s)
            if len(cur) >= rng.randint(2, 5):
                paras.append(" ".join(cur))
                cur = []
        if cur:
            paras.append(" ".join(cur))
        return "\n\n".join(paras)
    return " ".join(sentences)


def _record(fmt: str, instruction: str, input_: str, output: str | None) -> dict[str, Any]:
    """The record in the given format; output None leaves the answer out (a malformed record)."""
    if fmt == "alpaca":
        rec = {"instruction": instruction, "input": input_}
        if output is not None:
            rec["output"] = output
        return rec
    user = f"{instruction}\n\n{input_}" if input_ else instruction
    if fmt == "sharegpt":
        turns = [{"from": "human", "value": user}] + ([{"from": "gpt", "value": output}] if output is not None else [])
        return {"conversations": turns}
    msgs = [{"role": "user", "content": user}] + (
        [{"role": "assistant", "content": output}] if output is not None else []
    )
    return {"messages": msgs}


def _dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False)


def generate(path: str | os.PathLike, n: int, seed: int = 0, fmt: str = "alpaca") -> dict[str, int]:
    """Write n JSONL lines to path (streamed); returns counts of what was planted and the bytes written."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if n < 0:
        raise ValueError("n must be >= 0")
    rng = random.Random(seed)
    text = _Text(rng)
    recent_lines: list[str] = []  # ring buffer of recent valid lines
    recent_prompts: list[tuple[str, str]] = []  # ring buffer of recent (instruction, input)
    counts = {
        "lines": 0,
        "unique": 0,
        "exact_duplicate": 0,
        "same_instruction": 0,
        "invalid_json": 0,
        "missing_output": 0,
        "bytes": 0,
    }

    def remember(buf: list, item: Any) -> None:
        if len(buf) < WINDOW:
            buf.append(item)
        else:
            buf[rng.randrange(WINDOW)] = item

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n", buffering=1 << 20) as fh:
        for _ in range(n):
            roll = rng.random()
            if roll < MALFORMED_RATE:
                instruction, input_ = _instruction(text), _input(text)
                if rng.random() < 0.5:
                    kind = "missing_output"
                    line = _dumps(_record(fmt, instruction, input_, None))
                else:
                    kind = "invalid_json"
                    good = _dumps(_record(fmt, instruction, input_, _output(text)))
                    if rng.random() < 0.7:  # a line cut short, as from an interrupted write
                        line = good[: rng.randrange(10, len(good) - 2)]
                    else:  # a Python repr instead of JSON
                        line = repr(_record(fmt, instruction, input_, _output(text)))
                counts[kind] += 1
            elif roll < MALFORMED_RATE + DUPLICATE_LINE_RATE and recent_lines:
                line = rng.choice(recent_lines)
                counts["exact_duplicate"] += 1
            elif roll < MALFORMED_RATE + DUPLICATE_LINE_RATE + SAME_INSTRUCTION_RATE and recent_prompts:
                instruction, input_ = rng.choice(recent_prompts)
                line = _dumps(_record(fmt, instruction, input_, _output(text)))
                counts["same_instruction"] += 1
                remember(recent_lines, line)
            else:
                instruction, input_ = _instruction(text), _input(text)
                line = _dumps(_record(fmt, instruction, input_, _output(text)))
                counts["unique"] += 1
                remember(recent_lines, line)
                remember(recent_prompts, (instruction, input_))
            fh.write(line)
            fh.write("\n")
            counts["lines"] += 1
    os.replace(tmp, path)
    counts["bytes"] = path.stat().st_size
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="the JSONL file to write")
    parser.add_argument("-n", type=int, default=100_000, help="number of lines (default 100000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="alpaca")
    args = parser.parse_args(argv)
    counts = generate(args.path, args.n, args.seed, args.fmt)
    print(json.dumps({"path": str(args.path), **counts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
