"""Every prompt template of Phase 2, by name; the recipe's `synthesis.prompts.<name>` replaces one.

A template's version is its name and a hash of its text, recorded with what it produced; the text is part of
every request it builds, so an edited template is a new request for exactly the calls it feeds (and the
calls fed by their answers), and every other answer still comes from the cache. `infinstruct prompts`
prints them.
"""

from __future__ import annotations

import hashlib

_DEPTH = (
    "You are a prompt rewriter. Rewrite the prompt below into a harder version that a capable assistant would "
    "find more demanding, while a person could still read, understand and answer it. Keep everything the "
    "original asks for, including any code or table it contains. Make it harder this way: {method} Add at "
    "most 10 to 20 words. Answer with the rewritten prompt only, without a title, a preamble or any comment."
    "\n\nPrompt:\n{instruction}"
)

TEMPLATES: dict[str, str] = {
    # Evol-Instruct's in-depth operations (Xu et al., 2023), each one way to make an instruction harder
    "evolve_add_constraints": _DEPTH.replace("{method}", "add one more constraint or requirement."),
    "evolve_deepen": _DEPTH.replace(
        "{method}", "where it asks about something specific, ask about it in more depth and breadth."
    ),
    "evolve_concretise": _DEPTH.replace("{method}", "replace a general concept with a more specific one."),
    "evolve_reasoning_steps": _DEPTH.replace(
        "{method}",
        "if it can be solved with a few simple steps, make it explicitly require reasoning in several steps.",
    ),
    "evolve_complicate_input": _DEPTH.replace(
        "{method}", "add a concrete input to work on (data, code, a table or a formula) that the task must use."
    ),
    # in-breadth: a new instruction of the same domain, rarer than the original
    "evolve_breadth": (
        "You are a prompt creator. Taking the prompt below as inspiration, write a brand new prompt "
        "of the same domain, about a rarer topic, of similar length and difficulty, that a person "
        "could understand and answer. Answer with the new prompt only, without a title, a preamble "
        "or any comment.\n\nPrompt:\n{instruction}"
    ),
    # elimination: did the evolution add anything?
    "equality_check": (
        "Here are two instructions.\n\nFirst:\n{parent}\n\nSecond:\n{child}\n\nDoes the second ask "
        "for essentially the same thing as the first, with no new requirement, depth or topic? Answer "
        'with only a JSON object: {"same": true or false}'
    ),
    # responses
    "respond": "{instruction}",
    "follow_up": (
        "Here is a conversation between a user and an assistant.\n\n{conversation}\n\nWrite the user's next "
        "message: one short follow-up question or request that builds on the assistant's last answer. "
        "Answer with the message only."
    ),
    # judging (also grades the students' answers in diagnosis)
    "judge": (
        "Rate the assistant's response to the instruction, each dimension an integer from 1 (very poor) to 10 "
        "(excellent): helpfulness, correctness, instruction_following, clarity; then overall (1-10), a list "
        'of flags among "unsafe", "refusal", "off_topic", "incomplete" (empty if none), and a one-'
        "sentence rationale. Answer with only a JSON object with the keys helpfulness, correctness, "
        "instruction_following, clarity, overall, flags, rationale.\n\n[Instruction]\n{instruction}\n\n"
        "[Response]\n{response}"
    ),
    # diagnosis: the student answers as it would be asked
    "student": "{instruction}",
}

# the words of the templates themselves: found in an evolved prompt, the evolver copied its scaffolding
SCAFFOLDING_MARKERS = (
    "rewritten prompt",
    "given prompt",
    "prompt rewriter",
    "prompt creator",
    "#prompt#",
    "rewrite the prompt",
    "new prompt:",
    "here is the rewritten",
    "here's the rewritten",
    "make it harder this way",
    "without a title, a preamble",
)


def template(name: str, overrides: dict[str, str] | None = None) -> str:
    """The text of a template: the recipe's own, else the default."""
    if name not in TEMPLATES:
        raise KeyError(f"no prompt template {name!r}; templates: {', '.join(TEMPLATES)}")
    return (overrides or {}).get(name, TEMPLATES[name])


def version(name: str, overrides: dict[str, str] | None = None) -> str:
    """`<name>:<hash of its text>`: recorded with every child, answer and grade it produced."""
    return f"{name}:{hashlib.sha256(template(name, overrides).encode()).hexdigest()[:8]}"


def render(name: str, overrides: dict[str, str] | None = None, **values: str) -> str:
    """The template filled in (plain replacement: braces in an instruction or in JSON examples stay as they are)."""
    text = template(name, overrides)
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text
