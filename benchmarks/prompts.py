"""About a hundred short, varied instructions for speed benchmarks."""

COUNTRIES = [
    "France",
    "Japan",
    "Kenya",
    "Peru",
    "Canada",
    "Italy",
    "Egypt",
    "Norway",
    "India",
    "Chile",
]
WORDS = ["hot", "fast", "happy", "early", "light", "open", "strong", "quiet", "rich", "full"]
NOUNS = ["mouse", "child", "city", "knife", "tooth", "leaf", "box", "person", "wolf", "cactus"]
TOPICS = [
    "rain",
    "the sea",
    "a library",
    "autumn",
    "a train",
    "bread",
    "the moon",
    "a cat",
    "a bridge",
    "coffee",
]
THINGS = [
    "photosynthesis",
    "a noun",
    "gravity",
    "an atom",
    "democracy",
    "a volcano",
    "inflation",
    "a verb",
    "DNA",
    "an eclipse",
]


def instructions() -> list[str]:
    out: list[str] = []
    for i in range(10):
        out += [
            f"What is the capital of {COUNTRIES[i]}?",
            f"What is the opposite of {WORDS[i]}? Answer with one word.",
            f"What is the plural of {NOUNS[i]}?",
            f"Write a haiku about {TOPICS[i]}.",
            f"Explain {THINGS[i]} in one sentence.",
            f"What is {i + 3} times {i + 7}?",
            f"Give me three words that rhyme with {WORDS[i]}.",
            f"Name a famous person from {COUNTRIES[i]}.",
            f"Write one sentence about {TOPICS[i]} for a child.",
            f"Is {NOUNS[i]} a noun or a verb?",
        ]
    return out
