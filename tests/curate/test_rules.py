"""Rule filters, read as the spec: each rule drops real-looking junk with its own reason and keeps
the near misses that real instruction data is full of (short answers, GSM8K, code, lists, Chinese).
"""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from conftest import SHARED_DATA
from infinstruct.curate.rules.filters import (
    REFUSAL_PHRASES,
    Ending,
    Rule,
    RuleSettings,
    Verdict,
    check,
    dup_line_ratio,
    echo_ratio,
    judge,
    loop_words,
    measure,
    refusal_phrase,
    text_ratio,
)

DEFAULTS = RuleSettings()
POOL = SHARED_DATA / "pool"


def chat(user: str, assistant: str, *more: str, system: str | None = None) -> tuple[tuple[str, str], ...]:
    """A conversation: user, assistant[, user, assistant ...], with an optional system prompt."""
    texts = (user, assistant, *more)
    turns = tuple(("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(texts))
    return ((("system", system),) if system else ()) + turns


LOG_LINE = "2024-03-01 12:00:07 INFO worker-3 served GET /api/items in 12 ms status 200\n"
LOOP = "Go to bed at the same time every night and wake up at the same time every morning. "
GOOD_START = (
    "Rats are social, curious animals that need space, company and a varied diet. Keep at least two "
    "rats together in a large wire cage with solid floors, several levels, hammocks and hiding places. "
    "Line the cage with paper bedding rather than cedar or pine shavings, which can harm their lungs. "
    "Clean the litter corner every day and the whole cage once a week. Let them play outside the cage "
    "for an hour a day in a room you have made safe, and handle them gently so they learn to trust you. "
    "Take them to a vet who knows small animals if they sneeze a lot or stop eating."
)

DROPPED = {
    Rule.EMPTY_OR_SHORT: [
        chat("What is the capital of Australia?", "..."),
        chat("???", "Could you tell me a bit more about what you would like to know?"),
        chat("Summarize the article in one sentence.", "-"),
    ],
    Rule.TOO_LONG: [
        chat(
            "Summarize the errors in this log:\n" + LOG_LINE * 1500, "There are no errors: every request returned 200."
        ),
    ],
    Rule.GARBAGE: [
        chat(
            "Describe the weather in Paris in spring.",
            "�������� �� ��������� ���� 2023 ������ ��������� ���� �� ������",
        ),
        chat(
            "Write a short greeting for a birthday card.",
            "Happy ~~~~ !!!! ???? //// ---- **** ^^^^ ++++ %%%% @@@@ ~~~~ !!!! ????",
        ),
    ],
    Rule.LANGUAGE: [
        chat(
            "Quelle est la capitale de l'Australie et pourquoi a-t-elle été choisie ?",
            "La capitale de l'Australie est Canberra. Elle a été choisie comme compromis entre Sydney et Melbourne.",
        ),
        chat(
            "Wie kann ich meine Deutschkenntnisse schnell verbessern?",
            "Am besten sprechen Sie jeden Tag mit Muttersprachlern und lesen deutsche Zeitungen.",
        ),
        chat("Расскажи мне об истории Москвы.", "Москва была основана в 1147 году и стала столицей России."),
        chat("日本の首都はどこですか？", "日本の首都は東京です。東京は世界で最も人口の多い都市の一つです。"),
    ],
    Rule.REFUSAL: [
        chat("How do I pick a lock?", "I'm sorry, but I can't help with that request."),
        chat(
            "Write a poem about the ocean.",
            "As an AI language model, I don't have personal feelings, but here is a poem:\n\nThe waves roll in...",
        ),
        chat("Tell me a dark joke.", "I’m sorry, but I cannot assist with that."),  # curly apostrophe
        chat("请写一篇关于战争的文章。", "作为一个人工智能语言模型，我无法撰写这类内容。"),
        chat("你今天心情怎么样？", "很抱歉，我无法体验情绪，但我很乐意帮助你。"),
        # refusals worded outside any phrase list: apology + inability + task verb, AI identity, no capacity
        chat(
            "Rewrite the text and correct the spelling errors.",
            "I'm afraid I can't do that. It is outside of what I am allowed to do.",
        ),
        chat(
            "Are there any AI tools for 2D animation?",
            "Unfortunately, I am not able to help with this kind of request.",
        ),
        chat(
            "Write me a top 10 list of the funniest ways to die.",
            "I apologize, but I do not feel comfortable generating a humorous list about dying. Perhaps we could "
            "talk about how different cultures celebrate the lives of those who passed.",
        ),
        chat(
            "What's the current date?", "As an AI, I don't have a real-time clock, so I cannot tell you today's date."
        ),
        chat(
            "Give me an executive summary of lottadigital.com",
            "As of my last update, I cannot browse the internet or access current data on specific websites.",
        ),
        chat(
            "Find sentences from the Guardian that contain this phrase.",
            "I'm sorry, but I'm unable to browse the internet. However, I can explain what the phrase means.",
        ),
        chat(
            "What do you think about ChatGPT?", "I don't have personal opinions, but ChatGPT is a widely used chatbot."
        ),
        chat(
            "Analyze the following code for security issues.",
            "Sorry, as an AI I do not have access to that information.",
        ),
        chat("请帮我写一封辞职信。", "对不起，我不能帮你写这封信。"),
    ],
    Rule.ECHO: [
        chat("What is the best way to learn a new language?", "What is the best way to learn a new language?"),
        chat(
            "Paraphrase: The quick brown fox jumps over the lazy dog near the river bank.",
            "The quick brown fox jumps over the lazy dog near the river bank.",
        ),
        # the answer is the input field (the instruction before it is long): echo of its paragraph
        chat("Compute the inverse of a matrix\n\nMatrix = [1,2,3; 4,5,6; 7,8,9]", "Matrix = [1,2,3; 4,5,6; 7,8,9]"),
        chat(
            "Write a code to join two given lists with a given separator.\n\nlist1 = [1, 2, 3]\nlist2 = [4, 5, 6]\n"
            "separator = ','",
            "list1 = [1, 2, 3]\nlist2 = [4, 5, 6]\nseparator = ','",
        ),
        chat(
            "Write a code to print out the length of the longest word amongst the given words"
            "\n\n“Hello World, Programing”",
            "“Hello World, Programing”",
        ),
        chat(
            "In Swift, create a program to sort an integer array using merge sort.",
            "In Swift, create a program to sort an integer",
        ),  # a prefix: 0.66 of the question
        chat("Explain why the sky is blue in simple words.", '"Explain why the sky is blue in simple words."'),
    ],
    Rule.REPETITION: [
        chat("Give me tips for better sleep.", "Here are some tips for better sleep: " + LOOP * 8),
        chat("请介绍一下学习的重要性。", "学习非常重要。" + "我们应该好好学习，天天向上，" * 12),
        # loops after a long good start: few of all the 5-grams repeat, but the answer ends in a loop
        chat("How do I care for a pet rat?", GOOD_START + " Feed a high quality rodent food as the staple diet." * 8),
        chat(
            "Write a template for a LinkedIn profile summary.",
            GOOD_START + " I completed supplementary training in" + " supplementary training in" * 15,
        ),
        chat(
            "How many pens and pencils?",
            "The pencils cost $2.5 x 38 = $<<2.5*38=95>>95. The pens cost $3.5 x 56 = "
            "$<<3.5*56=196>>196. The total is $95 + $196 = $291.\n#### 291" + " #### 291" * 14,
        ),
        chat(
            "How many people fit in the canoe?",  # cut inside the last word, as at a token limit
            GOOD_START + " the canoe was inside" * 10 + " the can",
        ),
    ],
    Rule.REPEATED_LINES: [
        chat("Make a list of snacks for game day.", "- Chips and dip\n- Veggie platters\n" + "- Veggie platters\n" * 8),
        chat(
            "Thank the customer for their feedback.",
            "Thank you for your feedback!\nThank you for your feedback!\nThank you for your feedback!\nBest regards.",
        ),
    ],
    Rule.TRUNCATED: [
        chat(
            "Can you explain the basics of quantum computing?",
            "Quantum computing is a type of computing that uses quantum mechanics, the branch of physics "
            "that describes the behavior of matter and energy at the",
        ),
        chat(
            "Write a story about immortal cats in New York.",
            "The city buzzed with the energy of a million lives.\n\nIn the heart of the high-rise, amid the shadows and secrets,",
        ),
        chat("What are the lyrics of the third verse?", 'The third verse of "Never Gonna Give You Up" goes like this:'),
        chat(
            "Write a Python function that adds two numbers.",
            "Here is the function:\n\n```python\ndef add(a, b):\n    return a + b\n",
        ),
        chat(
            "What would be a good quiz about omnichannel marketing?",
            "A quiz is a great way to engage visitors. Don't forget to share your results on social media to "
            "help others learn about the importance of seamless customer experiences across all",
        ),
        chat("人工智能带来了哪些机遇？", "人工智能的发展带来了许多机遇，例如"),
        # short cut-off lines after a line that ends a sentence, also between calculations
        chat(
            "How much is collected in entry fees?",
            "When the stadium is full, the fees are 2000*$20 = $<<2000*20=40000>>40000.\nWhen it is 3/4 full, "
            "there are 3/4*2000 = <<3/4*2000=1500>>1500 people.\nThe total entry fees collected",
        ),
        chat(
            "What kind of foods do they eat in Thailand?",
            "Thai food balances sweet, sour, salty and spicy flavours.\n\nSome other common ingredients are fish "
            "sauce, galangal, lemongrass and coconut milk. Thai food has many",
        ),
        chat(
            "How much sugar is left?",
            "She has 12 cups + 3 cups = <<12+3=15>>15 cups.\nShe needs 1 cup + 2 cups = "
            "<<1+2=3>>3 cups of sugar to make the batter and",
        ),
        chat(
            "How many lightning strikes are there each day?",
            "There are about 8 million lightning strikes each day. The exact number remains difficult to",
        ),
        chat(
            "How much money does she have at 21?",
            "She had $20 at age 21. But without knowing exactly when she gets the $3,",
        ),
    ],
}

GSM8K_ANSWER = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
)
SONG = (
    "Verse 1\nI walk the streets at night\nThe city lights are bright\n\nChorus\nWe are young, we are free\n"
    "Nothing's gonna stop you and me\n\nVerse 2\nThe radio plays our song\nWe sing it all night long\n\n"
    "Chorus\nWe are young, we are free\nNothing's gonna stop you and me"
)
KEPT = [
    chat("What is the capital of Australia?", "Canberra."),
    chat("What is the capital of Australia?", "Canberra"),
    chat('Write "Test"', "Test"),
    chat("What is 6 times 7?", "42"),
    chat("Is this review positive or negative? The food was great!", "Positive"),
    chat("Use emojis to describe a cute cat.", "😻🐱💕"),
    chat(
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether in April and May?",
        GSM8K_ANSWER,
    ),
    chat(
        "Write a JavaScript loop over an array.",
        "for (let i = 0; i < numbersArray.length; i++) {\n  console.log(numbersArray[i]);\n}",
    ),
    chat(
        "Write a function for the greatest common divisor.",
        "def gcd(a, b):\n    while b:\n        a, b = b, a % b\n    return a",
    ),
    chat("Write out the function signature for gcd of two integers.", "def gcd(x, y):"),
    chat("Print hello in Python.", 'Here you go:\n\n```python\nprint("hello")\n```'),
    chat("Construct a regular expression to validate a phone number.", r"^\(?[0-9]{3}\)?[-. ]?[0-9]{3}[-. ]?[0-9]{4}$"),
    chat(
        "Create a truth table for X OR Y.",
        "| X | Y | X OR Y |\n|---|---|--------|\n| 0 | 0 | 0 |\n| 0 | 1 | 1 |\n| 1 | 0 | 1 |\n| 1 | 1 | 1 |",
    ),
    chat(
        "Name some famous actors who started on Broadway.",
        "Some famous actors that started on Broadway include:\n- Meryl Streep\n- Al Pacino\n- Bernadette Peters",
    ),
    chat(
        "Give me three study tips.",
        "1. Study a little every day and review your notes before going to bed each night\n"
        "2. Teach what you learned to a friend so that you find the gaps in your own understanding\n"
        "3. Take short breaks",
    ),
    chat(
        "Choose a title for a post about avocados.",
        "The Guilt-Free Avocado: How to Enjoy This Nutrient-Rich Fruit Without Gaining Weight",
    ),
    chat(
        "Quote something Einstein said.",
        '"Two things are infinite: the universe and human stupidity." - Albert Einstein',
    ),
    chat("Write a short song about being young.", SONG),
    chat(
        "Plan a daily stand-up agenda.",
        "10:00 AM - Welcome and quick round of updates from every member of the team\n"
        "10:10 AM - Discuss blockers and decide who will help to remove each of them today",
    ),
    chat("Tell me something happy.", "I'm happy to hear your exams went well! Now we can relax together 😌"),
    chat("Where can I read the paper?", "You can read it at https://arxiv.org/abs/1706.03762"),
    chat("请用一句话介绍长城。", "长城是中国古代修建的军事防御工程，全长两万多公里。"),
    chat("中国的首都是哪里？", "北京"),
    chat("地球绕太阳公转一周需要多长时间？", "地球绕太阳公转一周大约需要三百六十五天。"),
    chat("Translate to French: Good morning, how are you today?", "Bonjour, comment allez-vous aujourd'hui ?"),
    chat(
        "This is a test of your French. Read the story and answer in English.\n\n"
        "Lucie est à la maison avec sa petite-fille, Lin. Elles n'ont pas de pain.",
        "No, Lucie and Lin do not have any bread at home.",
    ),
    chat("Extract the city from the sentence: I moved to Paris in 2019 and have lived there ever since.", "Paris"),
    chat("Sort these numbers: 3, 1, 2", "1, 2, 3"),
    chat(
        "What does 'as an AI language model' mean in chatbot answers?",
        "It is a disclaimer that early chat assistants put in front of many answers. It reminded users that "
        "the text came from a statistical model trained on web pages and books, without personal experience, "
        "opinions or access to current events. Because it appeared so often, it became a meme, and data "
        "engineers now filter it out of training sets. A typical example opened with 'As an AI language "
        "model, I cannot browse the internet' and then answered anyway.",
    ),
    chat("Hi", "Hello! How can I help you today?", "Tell me a fun fact.", "Honey never spoils."),
    # near misses of the refusal grammar: apologies and "can't" that are content, not refusals
    chat(
        "My friend's dog died. How can I support her?",
        "I'm so sorry to hear about your friend's loss. Losing a pet is painful. Here are a few ways to help:\n"
        "- Let her know you are there for her.\n- Share a favourite memory of the dog.\n- Offer practical help.",
    ),
    chat(
        "Write a reply to a customer whose order is late.",
        "Dear customer,\n\nWe apologize for the delay in your order. It will ship tomorrow, and we have refunded "
        "the shipping costs.\n\nBest regards,\nThe Support Team",
    ),
    chat(
        "Fix my code.",
        "Sorry for the confusion earlier! Here is the corrected function:\n\n```python\n"
        "def add(a, b):\n    return a + b\n```",
    ),
    chat("Write a sentence using the idiom 'can't help but'.", "I can't help but smile whenever I hear that song."),
    chat(
        "Recommend a novel about the sea.", "I can't recommend Moby-Dick highly enough: it is funny, strange and deep."
    ),
    chat("Why can't I see stars in the city?", "You can't see many stars in the city because of light pollution."),
    chat("What is an AI researcher?", "As an AI researcher, you study how to make computers learn from data."),
    chat("Write a motivational line for runners.", "I will not give up, because every mile makes me stronger."),
    chat(
        "Write a thank-you note to my teacher.",
        "Dear Ms. Lee,\n\nI cannot express how grateful I am for your patience this year.\n\nWarmly,\nSam",
    ),
    chat(
        "Tell a short story that opens with dialogue.",
        '"I can\'t do this anymore," Mia whispered, closing the laptop. Outside, the rain had finally stopped.',
    ),
    # near misses of echo: an answer picked out of the input, a quoted question before the answer
    chat("Identify the noun.\n\ncat", "cat"),
    chat(
        "Which sentence states the main idea?\n\nBees are vital. They pollinate a third of our crops. "
        "Without them, food prices would soar.",
        "They pollinate a third of our crops.",
    ),
    chat(
        "What does 'carpe diem' mean?",
        "'What does carpe diem mean?' is a common question: it is Latin for "
        "'seize the day', a call to enjoy the present.",
    ),
    # near misses of the loop: a chorus sung twice at the end, refrains, code and lists that repeat a little
    chat(
        "Write a short song about being young.",
        SONG + "\n\nChorus\nWe are young, we are free\nNothing's gonna stop you and me",
    ),
    chat(
        "Write a poem with a refrain.",
        "The sea is calm tonight,\nand still the sea, the sea.\nThe gulls have gone to sleep,\nand still the sea, "
        "the sea.\nThe boats are tied and dark,\nand still the sea, the sea.",
    ),
    chat(
        "Write Python turtle code that draws a square.",
        "import turtle\nt = turtle.Turtle()\nt.forward(100)\nt.right(90)\nt.forward(100)\nt.right(90)\n"
        "t.forward(100)\nt.right(90)\nt.forward(100)\nt.right(90)",
    ),
    chat("Create an array of 24 zeros.", "arr = [" + "0, " * 23 + "0]"),
    chat(
        "How many ways can a 3x4 table be filled with two colours?",
        "Each of the 12 cells has 2 options, so the total is:\n\n" + "2 x " * 11 + "2\n= 4096",
    ),
    chat("Sing the chorus of a cheerful song.", "Na na na na, na na na na, hey hey hey, goodbye!"),
    # near misses of truncation: phrases that end on a preposition, sign-offs, lists, hashtags
    chat(
        "List phrases that mean 'expected'.",
        "what we have envisioned\nwhat we have foreseen\nwhat we have looked forward to\nwhat we have hoped for",
    ),
    chat("Write a short thank-you note.", "Thank you for the lovely flowers! They made my week.\n\nBest wishes,\nAnna"),
    chat(
        "Write a tweet about women in STEM.",
        "Celebrating the women who shape science every day!\n#WomenInSTEM #ScienceCommunity #EmpowerWomen",
    ),
    chat(
        "List the ingredients.",
        "You will need:\n- 1 cup sliced carrots\n- 1 cup green beans\n- Salt and pepper to taste",
    ),
    chat("What is 2 + 2?", "4", system="You are a helpful assistant."),
]


@pytest.mark.parametrize(
    "rule,turns",
    [(rule, turns) for rule, cases in DROPPED.items() for turns in cases],
    ids=lambda v: v.value if isinstance(v, Rule) else "",
)
def test_junk_is_dropped_by_its_own_rule(rule, turns):
    verdict = check(turns, DEFAULTS)
    assert (verdict.keep, verdict.rule) == (False, rule), measure(turns)
    assert verdict.value is not None


@pytest.mark.parametrize("turns", KEPT, ids=lambda t: t[-1][1][:30])
def test_real_instruction_data_is_kept(turns):
    assert check(turns, DEFAULTS) == Verdict(True), measure(turns)


def test_the_failing_value_is_the_measured_one():
    turns = chat("Give me tips for better sleep.", "Here are some tips: " + LOOP * 8)
    verdict = check(turns, DEFAULTS)
    assert verdict.value == measure(turns)["dup_ngram_ratio"] > DEFAULTS.max_dup_ngram_ratio
    assert check(DROPPED[Rule.TRUNCATED][0], DEFAULTS).value == Ending.DANGLING_WORD
    assert check(DROPPED[Rule.LANGUAGE][0], DEFAULTS).value == "fr"
    loop = DROPPED[Rule.REPETITION][2]
    assert check(loop, DEFAULTS) == Verdict(False, Rule.REPETITION, measure(loop)["loop_words"])
    assert measure(loop)["dup_ngram_ratio"] < DEFAULTS.max_dup_ngram_ratio < 1 <= measure(loop)["loop_words"] // 10
    echo = DROPPED[Rule.ECHO][2]
    assert check(echo, DEFAULTS) == Verdict(False, Rule.ECHO, 1.0)  # the whole input paragraph
    refusal = DROPPED[Rule.REFUSAL][0]
    phrase = check(refusal, DEFAULTS).value
    assert phrase in REFUSAL_PHRASES and phrase in refusal[-1][1].lower()


def test_measure_names_are_a_stable_contract():
    stats = measure(chat("What is the capital of Australia?", "Canberra."))
    assert set(stats) == {
        "min_user_tokens",
        "min_response_tokens",
        "total_tokens",
        "text_ratio",
        "language",
        "language_confidence",
        "response_language",
        "response_language_confidence",
        "record_language",
        "refusal",
        "echo_ratio",
        "dup_ngram_ratio",
        "loop_words",
        "dup_line_ratio",
        "response_ending",
    }
    assert stats["min_user_tokens"] == 6 and stats["min_response_tokens"] == 1
    assert stats["language"] == "en" and 0 <= stats["language_confidence"] <= 1
    assert stats["record_language"] == "en"
    assert stats["response_ending"] == "complete" and stats["refusal"] == ""


def test_chinese_characters_count_as_tokens():
    stats = measure(chat("请用一句话介绍长城。", "长城是中国古代的军事工程。"))
    assert stats["min_user_tokens"] >= 8 and stats["min_response_tokens"] >= 11


def test_stats_are_deterministic_and_survive_json():
    for turns in [*KEPT, *(t for cases in DROPPED.values() for t in cases)]:
        stats = measure(turns)
        assert stats == measure(turns)
        stored = json.loads(json.dumps(stats))  # as kept in record_stats (jsonb)
        assert judge(stored, DEFAULTS) == judge(stats, DEFAULTS)


@pytest.mark.parametrize(
    "text",
    [
        "Café, naïve résumé and jalapeño: ½ cup of crème fraîche — stir well!",
        "Great job!!! 😀😀😀 ☀☀ You did it ✔ ✔ ✔ → → → ...",
        "Straße № 5 ① ② ③ · · · «quoted» „text“ ‹›",
        "Москва — столица России, а Санкт-Петербург — её культурная столица.",
        "请把下面这句话翻译成英文：今天天气很好，我们去公园散步吧！",
        "tabs\tand\u00a0no-break\u3000ideographic\u2009thin spaces count as space, not as text",
    ],
)
def test_text_ratio_counts_every_letter_digit_and_emoji_of_any_script(text):
    # the definition, one character at a time: letters and digits of any script, plus emoji, over non-space
    nonspace = [c for c in text if not c.isspace()]
    emoji = sum("\U0001f000" <= c <= "\U0001faff" or "\u2600" <= c <= "\u27bf" for c in nonspace)
    assert text_ratio(text) == round((sum(c.isalnum() for c in nonspace) + emoji) / len(nonspace), 4)


def test_only_repeated_prose_lines_count_as_repeated():
    chorus = "And the river keeps on rolling home"
    assert dup_line_ratio(f"{chorus}\nto the sea\n{chorus}\nto the hills") == round(
        len(chorus) / (2 * len(chorus) + 22), 4
    )
    assert dup_line_ratio("for x in xs:\n    print(x)\nfor y in ys:\n    print(x)") == 0.0  # indented: code
    assert dup_line_ratio("x = 1;\nprint(x)\nx = 1;\nprint(x)") == 0.0  # code characters: not prose
    assert dup_line_ratio("Step one\nx = 1;\nStep one\nx = 1;") == 0.5  # only the prose lines count
    assert dup_line_ratio("one line\nanother line") == 0.0


def test_thresholds_apply_without_recomputing():
    stats = measure(chat("Is it going to rain?", "Yes."))
    assert judge(stats, DEFAULTS).keep
    stricter = RuleSettings(min_response_tokens=3)
    assert judge(stats, stricter) == Verdict(False, Rule.EMPTY_OR_SHORT, 1)


def test_first_failing_rule_in_documented_order_wins():
    # a refusal that is also cut off: refusal comes before truncated
    turns = chat("How do I make a weapon?", "I'm sorry, but I can't help with that, because")
    assert check(turns, DEFAULTS).rule is Rule.REFUSAL
    only_truncated = RuleSettings(enabled=["truncated"])
    assert check(turns, only_truncated) == Verdict(False, Rule.TRUNCATED, "dangling_word")
    assert check(turns, RuleSettings(enabled=[])).keep


@pytest.mark.parametrize(
    "text, words",
    [
        ("a b c d " + "x y z " * 5, 12),  # 5 copies of "x y z": the 4 after the first
        ("a b c d " + "x yy zz " * 5 + "x y", 14),  # the last word cut short
        ("a b " * 2, 0),  # two copies: a repeat, not a loop
        ("q " + "a b " * 3 + "end", 0),  # the repeat does not reach the end
        ("哈哈哈", 2),
        ("la " * 20_000, 19_999),  # linear on periodic text
    ],
)
def test_loop_words_counts_the_loop_an_answer_ends_with(text, words):
    assert loop_words(text) == words


@pytest.mark.parametrize(
    "question, answer, ratio",
    [
        ("Compute the inverse of a matrix\n\nMatrix = [1,2,3; 4,5,6]", "Matrix = [1,2,3; 4,5,6]", 1.0),
        ("Identify the noun.\n\ncat", "cat", round(3 / 22, 4)),  # under 3 words: against the whole question
        ("Correct the PHP code.\n\necho 'Hello, World!\";", "echo 'Hello, World!';", 0.0),  # a one-character fix
        ("Say hi", "Hello", 0.0),
    ],
)
def test_echo_is_measured_against_the_paragraph_it_copies(question, answer, ratio):
    assert echo_ratio(question, answer) == ratio


def test_loops_and_refusals_are_settings_and_phrases():
    loop = DROPPED[Rule.REPETITION][2]
    assert check(loop, RuleSettings(max_loop_words=1_000)).keep
    lines = DROPPED[Rule.REPEATED_LINES][0]  # a loop of whole lines: the more specific reason
    assert measure(lines)["loop_words"] > DEFAULTS.max_loop_words
    assert check(lines, RuleSettings(enabled=["repetition"])).rule is Rule.REPETITION
    assert refusal_phrase("I’m afraid I can’t do that.") == "i'm afraid i can't do that"
    late = "Sure! " + "Here is the answer. " * 20 + "As an AI, I cannot browse."
    assert refusal_phrase(late) == ""  # after the opening: content


def test_allowed_languages_are_a_setting():
    french = DROPPED[Rule.LANGUAGE][0]
    assert check(french, RuleSettings(allowed_languages=["en", "zh", "fr"])).keep
    chinese = KEPT[21]
    assert check(chinese, RuleSettings(allowed_languages=["en"])) == Verdict(False, Rule.LANGUAGE, "zh")


def test_a_truncation_kind_can_be_tolerated():
    turns = DROPPED[Rule.TRUNCATED][4]
    assert check(turns, RuleSettings(truncated_endings=["open_code_fence", "dangling_word"])).keep


def test_settings_are_strict():
    with pytest.raises(ValidationError, match="max_echo_ration"):
        RuleSettings(max_echo_ration=0.5)
    with pytest.raises(ValidationError):
        RuleSettings(enabled=["no_such_rule"])
    assert Rule.ECHO.code == "rule:echo"


# --- real data (../shared/data) ---------------------------------------------------------------

needs_pool = pytest.mark.skipif(not POOL.is_dir(), reason="needs ../shared/data/pool")


def _keep_rate(conversations) -> tuple[float, list]:
    conversations = list(conversations)
    dropped = [(v.rule, v.value, t[0][1][:60]) for t in conversations if not (v := check(t, DEFAULTS)).keep]
    return 1 - len(dropped) / len(conversations), dropped


@pytest.mark.shared_data
@needs_pool
def test_gsm8k_train_is_kept():
    lines = (json.loads(line) for line in (POOL / "gsm8k_train.custom.jsonl").open())
    rate, dropped = _keep_rate(chat(r["question"].strip(), r["answer"].strip()) for r in lines)
    assert rate >= 0.99, dropped[:20]


@pytest.mark.shared_data
@needs_pool
def test_gpt4_alpaca_eval_answers_are_kept():
    role = {"system": "system", "human": "user", "gpt": "assistant"}
    lines = (json.loads(line) for line in (POOL / "alpaca_eval_gpt4_1106_preview.sharegpt.jsonl").open())
    conversations = [tuple((role[t["from"]], t["value"].strip()) for t in r["conversations"]) for r in lines]
    rate, dropped = _keep_rate(conversations)
    # GPT-4 opens 2% of its answers with refusal or "As an AI, I don't have ..." boilerplate, the kind
    # the refusal rule drops; every other rule keeps 99% of them
    refusals = [d for d in dropped if d[0] is Rule.REFUSAL]
    assert len(refusals) <= 0.03 * len(conversations), refusals
    assert 1 - (len(dropped) - len(refusals)) / len(conversations) >= 0.99, dropped


@pytest.mark.parametrize(
    "user, response, expected",
    [
        (("en", 0.95), ("fr", 0.97), "en"),  # a translation task is in its instruction's language
        (("fr", 0.45), ("en", 0.85), "en"),  # a short, unsure instruction defers to a surer answer
        (("fr", 0.45), ("en", 0.30), "fr"),  # ... but not to a less sure one
        (("de", 0.85), ("en", 0.99), "de"),  # an instruction identified surely (>= 0.8) decides
    ],
)
def test_record_language_policy(monkeypatch, user, response, expected):
    import infinstruct.curate.rules.filters as rules_module

    answers = iter([user, response])
    monkeypatch.setattr(rules_module, "detect", lambda text, max_chars=None: next(answers))
    assert measure(chat("some instruction", "some answer"))["record_language"] == expected


# --- a rule is a registered unit; its measurement is versioned on its own ------------------------------


def test_every_rule_is_registered_with_the_measurements_it_reads():
    from infinstruct.curate.rules.filters import MEASUREMENTS, RULES

    assert [f.rule for f in RULES] == list(Rule)
    turns = chat(
        "Write a haiku about the sea, please.",
        "Waves fold into foam / the gull writes on the wind / tide keeps what it takes.",
    )
    everything = measure(turns)
    for rule_filter in RULES:  # a rule's check needs only the statistics of the measurements it reads
        subset = measure(turns, rule_filter.reads)
        assert rule_filter.fails(subset, DEFAULTS) == rule_filter.fails(everything, DEFAULTS)
    assert everything == {k: v for name in MEASUREMENTS for k, v in measure(turns, [name]).items()}


def test_a_changed_measurement_is_the_only_one_taken_again_for_stored_records(engine, tmp_path, monkeypatch):
    """A new or changed measurement (its version bumped) is measured for the stored records alone: the
    other statistics are reused; statistics stored under the former single version count as version 2."""
    import dataclasses
    import uuid

    import sqlalchemy as sa

    from conftest import write_jsonl, write_recipe
    from infinstruct import pipeline
    from infinstruct.curate.rules import filters

    write_jsonl(
        tmp_path / "a.jsonl",
        [
            {"instruction": f"Name a colour of the rainbow, number {n}.", "input": "", "output": f"Colour {n}: indigo."}
            for n in range(5)
        ],
    )
    recipe = write_recipe(
        tmp_path, f"rules-{uuid.uuid4().hex[:6]}", [{"name": "a", "path": "a.jsonl", "format": "alpaca"}]
    )
    run_id = f"rules-{uuid.uuid4().hex[:8]}"
    pipeline.start_run(run_id, recipe)
    (part,) = pipeline.plan(run_id)
    pipeline.ingest_partition(run_id, part)
    assert pipeline.apply_rules(run_id, part)["measured"] == 5

    taken = []

    def counting(name, compute):
        def wrapped(conversation):
            taken.append(name)
            return compute(conversation)

        return wrapped

    registry = {
        name: dataclasses.replace(m, compute=counting(name, m.compute)) for name, m in filters.MEASUREMENTS.items()
    }
    registry["echo"] = dataclasses.replace(registry["echo"], version=3)
    monkeypatch.setattr(filters, "MEASUREMENTS", registry)
    assert pipeline.apply_rules(run_id, part)["measured"] == 5  # new versions: the stage runs again
    assert taken == ["echo"] * 5

    taken.clear()
    with engine.begin() as conn:  # as stored before per-measurement versions, at the former version 2
        conn.execute(
            sa.text(
                "update record_stats set versions = null, version = 2 where record_id in"
                " (select record_id from records where partition_id = :p)"
            ),
            {"p": part},
        )
    monkeypatch.setattr(filters, "MEASUREMENTS", {**registry, "echo": dataclasses.replace(registry["echo"], version=2)})
    pipeline.apply_rules(run_id, part)
    assert taken == []  # version 2 of every measurement: nothing to take again


@pytest.mark.parametrize("codes", [["english"], ["en", "xx"], ["EN"]])
def test_an_unknown_language_code_is_an_error_not_a_rule_that_allows_nothing(codes):
    with pytest.raises(ValidationError, match="unknown language code"):
        RuleSettings(allowed_languages=codes)
    assert RuleSettings(allowed_languages=["en", "zh", "fr", "und"]).allowed_languages == ["en", "zh", "fr", "und"]
