"""Writes bench/tasks/topics.jsonl: a news-topic task given only as a task.path file (bench/target.py).

Templated headlines from four topics (sports, business, science, weather), four choices each. Deterministic:

    python bench/tasks/make_topics.py
"""

import json
import random
from pathlib import Path

TOPICS = {
    "sports": (["The home team", "The veteran striker", "The national side", "The young goalkeeper", "The coach",
                "The tennis champion", "The marathon runner", "The rugby club", "The cycling team", "The boxer",
                "The cricket captain", "The swimming star"],
               ["wins the final after extra time", "signs a new three-year contract", "is injured before the derby",
                "breaks the league scoring record", "loses the title race on the last day", "reaches the cup semi-final",
                "is sent off in the second half", "wins gold at the championships"]),
    "business": (["The bank", "The car maker", "The retail chain", "The oil company", "The software firm",
                  "The airline", "The shipping group", "The insurer", "The supermarket group", "The chip maker",
                  "The telecom operator", "The steel producer"],
                 ["reports record quarterly profits", "cuts two thousand jobs", "agrees to buy a smaller rival",
                  "sees its shares fall after the results", "raises prices as costs climb", "opens two hundred new stores",
                  "warns investors of lower sales", "names a new chief executive"]),
    "science": (["Astronomers", "The research team", "Biologists", "Physicists", "The space agency",
                 "Chemists", "Geologists", "Marine scientists", "Neuroscientists", "Climate researchers",
                 "Mathematicians", "Doctors at the university"],
                ["discover a new planet orbiting a nearby star", "publish a study on cell ageing",
                 "measure the particle's mass more precisely", "launch a probe to study the sun",
                 "find fossils of an unknown species", "sequence the genome of a rare frog",
                 "build a more precise atomic clock", "test a new vaccine in mice"]),
    "weather": (["Forecasters", "The storm", "The heatwave", "Heavy rain", "The cold front", "Strong winds",
                 "The blizzard", "Thick fog", "A tropical storm", "The drought", "Freezing rain", "Thunderstorms"],
                ["brings flooding to the coast tonight", "is expected to last until the weekend",
                 "closes schools across the region", "sets a temperature record for March",
                 "causes delays at the airport", "brings snow to the hills overnight",
                "leaves rivers at their lowest level", "knocks out power to thousands of homes"]),
}


def rows() -> list[dict]:
    out = []
    names = list(TOPICS)
    for topic, (subjects, events) in TOPICS.items():
        for s, subject in enumerate(subjects):
            for e, event in enumerate(events):
                out.append({"id": f"{topic}-{s}-{e}",
                            "query": f"Headline: {subject} {event}.\nTopic:", "choices": [f" {n}" for n in names],
                            "gold": names.index(topic)})
    random.Random(0).shuffle(out)
    return out


if __name__ == "__main__":
    path = Path(__file__).with_name("topics.jsonl")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows()), encoding="utf-8")
    print(f"{path}: {len(rows())} rows")
