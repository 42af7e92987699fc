"""The prompts a head is trained on: written here from topic seeds, nothing taken from a dataset.

A head learns to predict its target's own continuations, so what matters is that the prompts ask
for the kinds of text people ask for (stories, letters, explanations, code, arithmetic, lists,
translations, summaries, answers from a given passage), not where they come from. Every prompt
below is built from the topic and task lists in this file; prompts that need a passage to work on
(summaries, extraction, answers from context) get one the target writes itself first
(`passage_prompts`, stage 1 of `leapdecode train-head`). No benchmark's questions, nor anything
built from them, are used.
"""

from __future__ import annotations

import random

TOPICS = [
    "the water cycle", "volcanoes", "honey bees", "the history of the bicycle", "black holes", "coral reefs",
    "the printing press", "solar panels", "the Roman roads", "penguins", "coffee farming", "the immune system",
    "glaciers", "jazz music", "the first airplanes", "recycling plastic", "desert plants", "the human heart",
    "electric cars", "the Silk Road", "tides", "mushrooms", "the Olympic games", "lighthouses", "earthquakes",
    "paper money", "the moon landing", "rainforests", "chess", "the steam engine", "octopuses", "wind turbines",
    "ancient Egypt", "photosynthesis", "the internet", "bread baking", "migratory birds", "vaccines",
    "the piano", "city parks", "the Great Wall", "sleep", "dinosaurs", "public libraries", "batteries",
    "the Renaissance", "wolves", "clouds", "trains", "the stock market", "origami", "rivers", "telescopes",
    "tea ceremonies", "bridges", "the printing of books", "autumn leaves", "sharks", "farm tractors",
    "the Arctic", "robots", "soap", "maps", "antibiotics", "kites", "the postal service", "salt",
    "hot air balloons", "the violin", "elections", "cheese making", "the speed of light", "sand dunes",
    "the alphabet", "submarines", "bamboo", "windmills", "the calendar", "fireflies", "clocks", "castles",
    "rain gauges", "marathons", "the periodic table", "street food", "whales", "microscopes", "board games",
    "gardening", "the Industrial Revolution", "snowflakes", "volunteering", "museums", "recipes for soup",
]
PEOPLE = ["a pirate", "a detective", "a medieval knight", "a tour guide", "a chef", "a space explorer",
          "a museum curator", "a sports coach", "a librarian", "a grumpy wizard", "a news reporter",
          "a travel agent", "a robot butler", "a lighthouse keeper", "a history teacher"]
LANGUAGES = ["French", "German", "Spanish", "Italian", "Chinese", "Japanese", "Portuguese", "Russian"]
SENTENCES = [
    "The weather was cold, so we stayed inside and read books all afternoon.",
    "Please send me the report before the meeting on Friday.",
    "My brother plays the guitar in a small band every weekend.",
    "The museum opens at nine and closes at six in the evening.",
    "We planted tomatoes, beans and carrots in the garden this spring.",
    "The train to the city leaves every twenty minutes.",
    "She finished the marathon in just under four hours.",
    "Could you tell me where the nearest pharmacy is?",
    "The children built a snowman in front of the school.",
    "Our team won the game after a long and difficult match.",
    "I would like to book a table for two people tonight.",
    "The new bridge will connect the two parts of the town.",
]
CODE_TASKS = [
    "reverses a string", "checks whether a number is prime", "returns the n-th Fibonacci number",
    "counts the words in a sentence", "merges two sorted lists", "finds the largest element of a list",
    "removes duplicates from a list while keeping the order", "converts Celsius to Fahrenheit",
    "checks whether a string is a palindrome", "computes the factorial of n", "flattens a nested list",
    "counts how often each character appears in a string", "returns the median of a list of numbers",
    "validates an email address with a simple rule", "sorts a list of dictionaries by a key",
    "reads a CSV file and returns the rows as dictionaries", "computes the greatest common divisor",
    "transposes a matrix given as a list of lists", "implements binary search", "groups words by their first letter",
]
WRITING = [
    "Write a short story about {topic}.", "Write a poem about {topic}.", "Write a blog post about {topic}.",
    "Write a letter to a friend describing {topic}.", "Write a product description inspired by {topic}.",
    "Write a speech for a school assembly about {topic}.", "Write a diary entry from someone who loves {topic}.",
    "Write a short news article about a new discovery related to {topic}.",
]
EXPLAIN = [
    "Explain {topic} to a ten-year-old.", "What are the most important facts about {topic}?",
    "Give me five interesting facts about {topic}.", "Describe the history of {topic} in a few paragraphs.",
    "What are the advantages and disadvantages of {topic}?", "How does {topic} affect everyday life?",
    "Write a list of questions a student might ask about {topic}, with answers.",
    "Compare {topic} and {other} in a short essay.", "Why is {topic} important? Answer in detail.",
]
ROLEPLAY = ["Pretend you are {person}. Introduce yourself and talk about {topic}.",
            "You are {person}. Give advice to a beginner who wants to learn about {topic}.",
            "Act as {person} and describe a typical day at work."]
REASONING = [
    "If every {a} is a {b} and some {b}s are {c}, can we say that some {a}s are {c}? Explain your reasoning.",
    "Tom is taller than Ann, and Ann is taller than Joe. Who is the shortest? Explain step by step.",
    "A box holds {x} red and {y} blue marbles. What is the chance of drawing a red marble? Explain.",
]
MATH = [
    "A shop sells pencils for {x} cents each. How much do {y} pencils cost in dollars? Solve step by step.",
    "Sara reads {x} pages a day. How many days does she need for a book of {z} pages? Show your work.",
    "A train travels {x} kilometers per hour for {y} hours. How far does it go? Explain each step.",
    "There are {x} students in a class and {y} of them are girls. What fraction are boys? Show the steps.",
    "A farmer has {x} cows and buys {y} more each year. How many cows will he have after {w} years? "
    "Solve it step by step.",
    "What is {x} multiplied by {y}, minus {w}? Show your calculation.",
    "A recipe needs {w} eggs for {y} people. How many eggs are needed for {x} people? Explain.",
    "Tickets cost {y} dollars for adults and {w} dollars for children. A family of {w} adults and {y} children "
    "buys tickets. What do they pay? Solve step by step.",
]
ON_PASSAGE = [
    "Summarize the following text in a few sentences.\n\n{passage}",
    "Write a one-paragraph summary of this article:\n\n{passage}",
    "List the key facts in the following text.\n\n{passage}",
    "Read the passage below and answer the question: what is the main idea?\n\n{passage}",
    "Based on the text below, write three questions and their answers.\n\n{passage}",
    "Extract every number and name mentioned in this text, as a list.\n\n{passage}",
    "Rewrite the following text in simpler words.\n\n{passage}",
    "Context:\n{passage}\n\nUsing only the context above, explain why {topic} matters.",
]
QUESTION_SEEDS = [
    "Write one question that a curious student might ask about {topic}. Write only the question.",
    "Write a request that someone might send to an assistant about {topic}. Write only the request.",
    "Describe a practical problem involving {topic} in one or two sentences and ask for help with it. "
    "Write only the request.",
    "Write a question about {topic} that needs a careful, step-by-step answer. Write only the question.",
]
FOLLOW_UPS = [
    "Can you make that shorter?", "Now explain it to a child.", "Give me one more example.",
    "Rewrite your answer as a list of bullet points.", "What is the most important point? Explain why.",
    "Turn your answer into a short poem.", "Translate the first sentence of your answer into {language}.",
    "Add a title and a one-sentence conclusion.", "Is there anything you got wrong? Check your answer.",
    "How would {person} say the same thing?", "Write a follow-up paragraph about {topic}.",
]
PASSAGE_SEEDS = ["Write a short article about {topic}.", "Write an encyclopedia entry about {topic}.",
                 "Write a news report about an event involving {topic}."]


def _fill(template: str, rng: random.Random) -> str:
    topic, other = rng.sample(TOPICS, 2)
    a, b, c = rng.sample(["cats", "birds", "artists", "doctors", "pilots", "farmers", "swimmers", "teachers"], 3)
    return template.format(topic=topic, other=other, person=rng.choice(PEOPLE), a=a, b=b, c=c,
                           language=rng.choice(LANGUAGES),
                           x=rng.randint(3, 90), y=rng.randint(2, 40), z=rng.randint(100, 900),
                           w=rng.randint(2, 9))


def prompts(n: int, seed: int = 0) -> list[str]:
    """n stand-alone prompts (every kind but those on a passage); the same prompt may come twice."""
    rng = random.Random(seed)
    kinds = [
        (4, lambda: _fill(rng.choice(WRITING), rng)),
        (4, lambda: _fill(rng.choice(EXPLAIN), rng)),
        (2, lambda: _fill(rng.choice(ROLEPLAY), rng)),
        (1, lambda: _fill(rng.choice(REASONING), rng)),
        (3, lambda: _fill(rng.choice(MATH), rng)),
        (2, lambda: f"Write a Python function that {rng.choice(CODE_TASKS)}. Explain how it works."),
        (3, lambda: f"Translate into {rng.choice(LANGUAGES)}: {rng.choice(SENTENCES)}"),
        (1, lambda: f"Translate this {rng.choice(LANGUAGES)} idea into English and explain it: "
                    f"{rng.choice(SENTENCES)}"),
    ]
    weights = [w for w, _ in kinds]
    return [rng.choices(kinds, weights)[0][1]() for _ in range(n)]


def passage_seeds(n: int, seed: int = 1) -> list[str]:
    """Stage 1: prompts whose answers become the passages of `passage_prompts`."""
    rng = random.Random(seed)
    return [_fill(rng.choice(PASSAGE_SEEDS), rng) for _ in range(n)]


def passage_prompts(passages: list[str], seed: int = 2) -> list[str]:
    """Stage 2: a task on each passage the target wrote."""
    rng = random.Random(seed)
    return [_fill(rng.choice(ON_PASSAGE).replace("{passage}", "{{passage}}"), rng).format(passage=p.strip())
            for p in passages if p.strip()]


def question_seeds(n: int, seed: int = 3) -> list[str]:
    """Prompts whose answers are questions the target asks itself (then answers: more varied
    prompts than the templates above give)."""
    rng = random.Random(seed)
    return [_fill(rng.choice(QUESTION_SEEDS), rng) for _ in range(n)]


def follow_ups(conversations: list[tuple[str, str]], seed: int = 4) -> list[list[dict]]:
    """A second user turn after each (prompt, answer): the target's second answer is trained on
    with the whole conversation in its context."""
    rng = random.Random(seed)
    return [[{"role": "user", "content": p}, {"role": "assistant", "content": a.strip()},
             {"role": "user", "content": _fill(rng.choice(FOLLOW_UPS), rng)}]
            for p, a in conversations if a.strip()]
