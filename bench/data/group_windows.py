"""Issue 25's catch-up and topic evaluation windows (bench/data/catchup_windows.jsonl,
topic_windows.jsonl) from hand-written references per demo-town thread.

Written by hand on 2026-12-07, before any issue-25 change to catch-up or topics, and kept out
of every rule, example and threshold. The demo town's threads are an opener and four replies
(replies are drawn at random, so some do not answer the opener: those are left out of the
references). Each reference point names only the people whose messages it cites; keyphrases
occur in the thread's own words (checked here).

    python bench/data/group_windows.py
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from townsquare.social import demo  # noqa: E402

# thread (group prefix + opener index): ([(point, offsets of the messages it cites)], keyphrases)
REFS = {
    "ri000": (
        [
            ("Andre set up a pace group for Tuesday at 5:00 per km, open to all", [0]),
            ("Tomas and Miguel are in and suggest meeting at the kiosk at 7", [2, 4]),
        ],
        ["pace group", "Tuesday"],
    ),
    "ri005": (
        [
            ("Helena asked about the new loop past Alfama (5 km, mostly flat)", [0]),
            ("Nuno says the hills near Benfica are brutal", [1]),
            ("Tomas recommends a physio next to the market in Alfama", [4]),
        ],
        ["new loop", "Alfama"],
    ),
    "ri010": (
        [
            (
                "Reminder from Lara: the Belém Night Run is in 12 weeks and registration closes Friday",
                [0],
            ),
            ("Rui and Mia signed up for the Riverside 10k", [1, 3]),
            ("Miguel and Andre are testing new shoes", [2, 4]),
        ],
        ["Belém Night Run", "registration"],
    ),
    "ri015": (
        [
            ("Helena asked about the new loop past Marvila (5 km, mostly flat)", [0]),
            ("Tomas says the hills near Graça are brutal", [2]),
            ("Nuno recommends a physio by the market in Benfica", [4]),
        ],
        ["new loop", "Marvila"],
    ),
    "ri020": (
        [
            ("Clara proposed a Saturday morning 5 km river run from Marvila", [0]),
            (
                "Laura asked for the 21 km version; Ivo and Tomas are in (Tomas at 6:00 pace)",
                [1, 2, 4],
            ),
        ],
        ["Saturday", "river", "Marvila"],
    ),
    "ri025": (
        [
            (
                "Reminder from Miguel: the Lisbon Half is in 5 weeks, registration closes Saturday",
                [0],
            ),
            ("Nuno, Noah and Mia are in; meeting at the kiosk at 7", [1, 2, 4]),
        ],
        ["Lisbon Half", "registration"],
    ),
    "ri030": (
        [
            (
                "Reminder from Nuno: the Riverside 10k is in 2 weeks, registration closes Saturday",
                [0],
            ),
            (
                "Lara signed up for the Belém Night Run; Miguel prefers 6:30 because of the heat",
                [3, 2],
            ),
        ],
        ["Riverside 10k", "registration"],
    ),
    "ri035": (
        [
            ("Miguel asked about the new loop past Arroios (21 km, mostly flat)", [0]),
            ("Lara asked for an 8 km version because she is tapering", [3]),
        ],
        ["new loop", "Arroios"],
    ),
    "ri040": (
        [
            ("Reminder from Tomas: the Lisbon Half is in 5 weeks, registration closes Friday", [0]),
            ("Miguel advises foam rolling and easy 12 km runs", [1]),
        ],
        ["Lisbon Half", "registration"],
    ),
    "ri045": (
        [
            (
                "Andre's knee hurts after Saturday's long run and he asked for a physio in Cais do Sodré",
                [0],
            ),
            (
                "Tomas recommends a physio next to the market in Benfica; foam rolling and easy 8 km were suggested",
                [1, 2],
            ),
        ],
        ["knee", "physio", "Cais do Sodré"],
    ),
    "ri050": (
        [
            (
                "Reminder from Helena: the Lisbon Half is in 5 weeks, registration closes Tuesday",
                [0],
            ),
            ("Lara signed up for the Lisbon Half and asked for the 21 km version", [1, 2]),
            ("Laura recommends a physio by the market in Marvila", [3]),
        ],
        ["Lisbon Half", "registration"],
    ),
    "ri055": (
        [
            (
                "Lara's knee hurts after Friday's long run and she asked for a physio in Campo de Ourique",
                [0],
            )
        ],
        ["knee", "physio", "Campo de Ourique"],
    ),
    "ri060": (
        [
            ("Reminder from Rui: the Lisbon Half is in 3 weeks, registration closes Friday", [0]),
            ("Nuno recommends a physio by the market in Alcântara", [2]),
            ("Andre, Miguel and Helena asked for a 21 or 10 km version while tapering", [1, 3, 4]),
        ],
        ["Lisbon Half", "registration"],
    ),
    "ri065": (
        [
            (
                "Mia's knee hurts after Wednesday's long run and she asked for a physio in Alfama",
                [0],
            ),
            ("Ivo suggests foam rolling and easy 5 km runs", [2]),
            ("Helena signed up for the Lisbon Half", [4]),
        ],
        ["knee", "physio", "Alfama"],
    ),
    "ri070": (
        [
            ("Andre proposed a Wednesday morning 8 km river run from Marvila", [0]),
            ("Nuno and Clara will bring jackets if it rains; Miguel is in", [1, 3, 4]),
        ],
        ["Wednesday", "river", "Marvila"],
    ),
    "ri075": (
        [
            (
                "Clara's knee hurts after Tuesday's long run and she asked for a physio in Campo de Ourique",
                [0],
            ),
            ("Mia signed up for the Lisbon Half", [1]),
        ],
        ["knee", "physio", "Campo de Ourique"],
    ),
    "ri080": (
        [
            ("Laura asked about the new loop past Parque das Nações (5 km, mostly flat)", [0]),
            ("Ivo and Tomas warn the hills near Cais do Sodré are brutal", [1, 4]),
        ],
        ["new loop", "Parque das Nações"],
    ),
    "ri085": (
        [
            ("Tomas proposed a Friday morning 10 km river run from Parque das Nações", [0]),
            ("Physios were recommended by the markets in Alfama and Arroios", [1, 3]),
        ],
        ["Friday", "river", "Parque das Nações"],
    ),
    "ri090": (
        [
            (
                "Reminder from Lara: the Belém Night Run is in 5 weeks, registration closes Friday",
                [0],
            ),
            ("Physios were recommended by the markets in Belém and Alcântara", [2, 4]),
        ],
        ["Belém Night Run", "registration"],
    ),
    "ri095": (
        [
            ("Laura set up a pace group for Saturday at 5:30 per km, open to all", [0]),
            ("Laura and Rui will bring jackets if it rains", [1, 2]),
        ],
        ["pace group", "Saturday"],
    ),
    "ri100": (
        [
            ("Rui set up a pace group for Tuesday at 6:30 per km, open to all", [0]),
            ("Miguel is in at 6:00 and asked for a 10 km version", [1, 3]),
        ],
        ["pace group", "Tuesday"],
    ),
    "ri105": (
        [
            (
                "Reminder from Nuno: the Belém Night Run is in 12 weeks, registration closes Wednesday",
                [0],
            ),
            ("Tomas signed up for the Riverside 10k", [2]),
            ("Physios were recommended by the markets in Arroios and Cais do Sodré", [1, 3]),
        ],
        ["Belém Night Run", "registration"],
    ),
    "ri110": (
        [
            ("Mia set up a pace group for Sunday at 6:30 per km, open to all", [0]),
            ("Laura is in; Clara asked for an 8 km version", [2, 4]),
        ],
        ["pace group", "Sunday"],
    ),
    "ri115": (
        [
            ("Tomas asked about the new loop past Campo de Ourique (10 km, mostly flat)", [0]),
            ("Rui and Clara say the hills near Benfica and Parque das Nações are brutal", [1, 2]),
        ],
        ["new loop", "Campo de Ourique"],
    ),
    "ri120": (
        [
            ("Laura asked about the new loop past Alcântara (5 km, mostly flat)", [0]),
            ("Tomas signed up for the Belém Night Run", [1]),
        ],
        ["new loop", "Alcântara"],
    ),
    "ri125": (
        [
            ("Noah proposed a Saturday morning 21 km river run from Parque das Nações", [0]),
            ("Mia (5:00) and Lara (6:00) are in", [1, 4]),
            ("Helena signed up for the Riverside 10k and Ivo for the Lisbon Half", [2, 3]),
        ],
        ["Saturday", "river", "Parque das Nações"],
    ),
    "ma000": (
        [
            ("Beatriz is looking for a reliable plumber around Marvila", [0]),
            ("Marta will call and report back", [4]),
        ],
        ["plumber", "Marvila"],
    ),
    "ma005": (
        [
            (
                "Sofia is giving away a box of kids' books and a lamp outside number 75 until Saturday",
                [0],
            ),
            ("Tiago recommends Sr. Paulo: quick and fair prices", [2]),
        ],
        ["kids' books", "lamp", "free"],
    ),
    "ma010": (
        [
            (
                "Marta is planning a street party on Friday afternoon and asked who can bring chairs",
                [0],
            ),
            ("Sofia's and Laura's families are in", [2, 3]),
        ],
        ["street party", "chairs", "Friday"],
    ),
    "ma015": (
        [
            ("Ines is looking for a reliable plumber around Campo de Ourique", [0]),
            ("Noah saw the cat by the bakery this morning", [3]),
        ],
        ["plumber", "Campo de Ourique"],
    ),
    "ma020": (
        [
            (
                "Pedro says the bins weren't collected again on Friday and asked whether to call the council",
                [0],
            ),
            ("Ines will call them tomorrow and report back", [2]),
        ],
        ["bins", "council"],
    ),
    "ma025": (
        [
            ("Marta is looking for Pimenta, a grey cat last seen near Arroios", [0]),
            ("Laura had the same problem last month; they came after two calls", [2]),
        ],
        ["grey cat", "Pimenta", "Arroios"],
    ),
    "ma030": ([("Noah reported a power cut in Graça this evening", [0])], ["power cut", "Graça"]),
    "ma035": (
        [
            ("Pedro is looking for a reliable plumber around Graça", [0]),
            ("Tiago and Lara will call and report back", [3, 4]),
        ],
        ["plumber", "Graça"],
    ),
    "ma040": (
        [
            (
                "Diego is giving away a box of kids' books and a lamp outside number 3 until Wednesday",
                [0],
            ),
            ("Sofia recommends Sr. Paulo: quick and fair prices", [2]),
            ("Diego can bring 6 chairs and a table", [3]),
        ],
        ["kids' books", "lamp", "free"],
    ),
    "ma045": (
        [
            (
                "Lara is planning a street party on Saturday afternoon and asked who can bring chairs",
                [0],
            ),
            (
                "Marta can bring 6 chairs and a table; Diego suggests a shared list of who brings what",
                [2, 4],
            ),
        ],
        ["street party", "chairs", "Saturday"],
    ),
    "ma050": (
        [
            (
                "Diego says the bins weren't collected again on Friday and asked whether to call the council",
                [0],
            ),
            ("Sofia will call them tomorrow and report back", [4]),
        ],
        ["bins", "council"],
    ),
    "ma055": (
        [
            (
                "Laura says the bins weren't collected again on Tuesday and asked whether to call the council",
                [0],
            ),
            ("Pedro recommends Sr. Paulo: quick and fair prices", [4]),
        ],
        ["bins", "council"],
    ),
    "ma060": (
        [
            ("Diego reported a power cut in Alfama this evening", [0]),
            ("Filipe had the same problem last month; they came after two calls", [1]),
        ],
        ["power cut", "Alfama"],
    ),
    "ma065": (
        [
            (
                "Marta is planning a street party on Tuesday afternoon and asked who can bring chairs",
                [0],
            ),
            ("Noah can help set up on Saturday", [2]),
        ],
        ["street party", "chairs", "Tuesday"],
    ),
    "ma070": (
        [
            (
                "Filipe is giving away a box of kids' books and a lamp outside number 75 until Friday",
                [0],
            ),
            ("Mia took the lamp and thanked him", [3]),
        ],
        ["kids' books", "lamp", "free"],
    ),
    "ma075": (
        [
            (
                "Pedro is giving away a box of kids' books and a lamp outside number 12 until Wednesday",
                [0],
            ),
            ("Laura took the lamp and thanked him", [4]),
        ],
        ["kids' books", "lamp", "free"],
    ),
    "ma080": (
        [
            (
                "Sofia is planning a street party on Friday afternoon and asked who can bring chairs",
                [0],
            ),
            ("Noah suggests a shared list of who brings what", [3]),
        ],
        ["street party", "chairs", "Friday"],
    ),
    "ma085": (
        [
            (
                "Sofia says the bins weren't collected again on Sunday and asked whether to call the council",
                [0],
            ),
            (
                "Mia had the same problem last month (they came after two calls); Beatriz will call and report back",
                [1, 2],
            ),
        ],
        ["bins", "council"],
    ),
    "ma090": (
        [
            (
                "Lara is giving away a box of kids' books and a lamp outside number 5 until Saturday",
                [0],
            ),
            ("Beatriz took the lamp and thanked her", [2]),
        ],
        ["kids' books", "lamp", "free"],
    ),
    "ma095": (
        [
            (
                "Filipe is planning a street party on Tuesday afternoon and asked who can bring chairs",
                [0],
            ),
            ("Marta's family is in and Noah can bring 6 chairs and a table", [2, 3]),
        ],
        ["street party", "chairs", "Tuesday"],
    ),
    "ma100": (
        [("Filipe is looking for Pimenta, a grey cat last seen near Marvila", [0])],
        ["grey cat", "Pimenta", "Marvila"],
    ),
    "ma105": (
        [
            (
                "Pedro is planning a street party on Friday afternoon and asked who can bring chairs",
                [0],
            ),
            ("Filipe can bring 6 chairs and a table", [1]),
        ],
        ["street party", "chairs", "Friday"],
    ),
    "ma110": (
        [
            (
                "Mia is giving away a box of kids' books and a lamp outside number 5 until Saturday",
                [0],
            ),
            ("Marta took the lamp and thanked her", [3]),
        ],
        ["kids' books", "lamp", "free"],
    ),
    "ma115": (
        [
            (
                "Beatriz is planning a street party on Tuesday afternoon and asked who can bring chairs",
                [0],
            ),
            ("Lara's family is in and suggests a shared list of who brings what", [1, 3]),
        ],
        ["street party", "chairs", "Tuesday"],
    ),
    "ma120": (
        [
            (
                "Lara says the bins weren't collected again on Sunday and asked whether to call the council",
                [0],
            ),
            ("Marta had the same problem last month; they came after two calls", [3]),
        ],
        ["bins", "council"],
    ),
    "ma125": (
        [
            ("Pedro is looking for a reliable plumber around Alfama", [0]),
            ("Lara will call and report back", [1]),
        ],
        ["plumber", "Alfama"],
    ),
    "su000": (
        [
            ("Pedro is trying a baguette on Saturday and asked for hydration tips", [0]),
            (
                "Pedro bakes at 230°C with steam for 20 minutes, then 210°C; Lara recommends a dutch oven",
                [3, 4],
            ),
            ("Helena says the mill shop in Cais do Sodré has great rye", [2]),
        ],
        ["baguette", "hydration"],
    ),
    "su005": (
        [
            ("Hugo is trying a brioche on Saturday and asked for hydration tips", [0]),
            ("Rui recommends a dutch oven", [1]),
        ],
        ["brioche", "hydration"],
    ),
    "su010": (
        [
            (
                "Pedro's sourdough came out flat again; he asked whether a 2-day-old starter is too young",
                [0],
            ),
            (
                "Hugo fixed his flat loaves by shaping tighter; Rita suggests less water, around 70%",
                [1, 2],
            ),
        ],
        ["sourdough", "flat", "starter"],
    ),
    "su015": (
        [
            ("Carla is trying a rye loaf on Tuesday and asked for hydration tips", [0]),
            ("Hugo says shaping tighter fixed his flat loaves", [1]),
        ],
        ["rye loaf", "hydration"],
    ),
    "su020": (
        [
            ("Hugo is trying a brioche on Friday and asked for hydration tips", [0]),
            ("Carla says the mill shop in Marvila has great rye", [1]),
            (
                "Carla and Pedro say to give the starter another week and feed it twice a day",
                [3, 4],
            ),
        ],
        ["brioche", "hydration"],
    ),
    "su025": (
        [
            (
                "Rita's sourdough came out flat again; she asked whether a 5-day-old starter is too young",
                [0],
            ),
            ("Mill shops in Arroios and Marvila were recommended for rye", [1, 2]),
        ],
        ["sourdough", "flat", "starter"],
    ),
    "su030": (
        [
            ("Pedro shared his brioche recipe: 12% hydration, overnight proof in the fridge", [0]),
            ("Carla recommends a dutch oven and a cold overnight proof for flavour", [2, 3]),
        ],
        ["brioche", "recipe"],
    ),
    "su035": (
        [("Hugo asked whether anyone sells rye flour near Belém", [0])],
        ["rye flour", "Belém"],
    ),
    "su040": (
        [
            ("Pedro shared his brioche recipe: 3% hydration, overnight proof in the fridge", [0]),
            ("Rita says the mill shop in Arroios has great rye", [3]),
        ],
        ["brioche", "recipe"],
    ),
    "su045": (
        [
            ("Leo is trying a country loaf on Friday and asked for hydration tips", [0]),
            (
                "Lara recommends a dutch oven; Ines says a cold overnight proof helps the flavour",
                [1, 2],
            ),
            ("Mill shops in Parque das Nações and Graça were recommended for rye", [3, 4]),
        ],
        ["country loaf", "hydration"],
    ),
    "su050": (
        [
            (
                "Pedro's sourdough came out flat again; he asked whether a 5-day-old starter is too young",
                [0],
            ),
            ("Leo says to give it another week and feed it twice a day", [3]),
        ],
        ["sourdough", "flat", "starter"],
    ),
    "su055": (
        [
            ("Ines is trying a rye loaf on Tuesday and asked for hydration tips", [0]),
            (
                "Lara suggests less water, around 70%; Tomas says shaping tighter fixed his flat loaves",
                [4, 3],
            ),
        ],
        ["rye loaf", "hydration"],
    ),
    "su060": (
        [
            ("Helena asked whether anyone sells rye flour near Graça", [0]),
            ("Leo says the mill shop in Graça has great rye", [4]),
        ],
        ["rye flour", "Graça"],
    ),
    "su065": (
        [
            (
                "Carla's sourdough came out flat again; she asked whether a 12-day-old starter is too young",
                [0],
            ),
            (
                "Leo recommends a dutch oven; Helena and Julia say a cold overnight proof helps",
                [1, 2, 3],
            ),
        ],
        ["sourdough", "flat", "starter"],
    ),
    "su070": (
        [
            ("Julia shared her rye loaf recipe: 5% hydration, overnight proof in the fridge", [0]),
            ("Helena recommends a dutch oven", [3]),
        ],
        ["rye loaf", "recipe"],
    ),
    "su075": (
        [
            ("Leo asked whether anyone sells rye flour near Cais do Sodré", [0]),
            ("Mill shops in Alfama and Graça were recommended for rye", [2, 4]),
        ],
        ["rye flour", "Cais do Sodré"],
    ),
    "su080": (
        [
            ("Lara shared her rye loaf recipe: 75% hydration, overnight proof in the fridge", [0]),
            (
                "Carla suggests going lower on water, around 70%; Julia bakes at 230°C with steam, then 210°C",
                [1, 3],
            ),
        ],
        ["rye loaf", "recipe"],
    ),
    "su085": (
        [
            ("Hugo asked what temperature to bake focaccia at because his oven runs hot", [0]),
            ("Lara bakes at 230°C with steam for 20 minutes, then 210°C", [2]),
        ],
        ["focaccia", "temperature", "oven"],
    ),
    "su090": (
        [
            (
                "Lara's sourdough came out flat again; she asked whether a 4-day-old starter is too young",
                [0],
            ),
            (
                "Rita recommends a dutch oven; Pedro and Rita bake at 230°C with steam, then 210°C",
                [3, 2, 4],
            ),
        ],
        ["sourdough", "flat", "starter"],
    ),
    "su095": (
        [("Carla asked whether anyone sells rye flour near Cais do Sodré", [0])],
        ["rye flour", "Cais do Sodré"],
    ),
    "su100": (
        [
            (
                "Pedro shared his country loaf recipe: 2% hydration, overnight proof in the fridge",
                [0],
            ),
            ("Tomas asked for a crumb shot", [1]),
        ],
        ["country loaf", "recipe"],
    ),
    "su105": (
        [
            (
                "Carla asked what temperature to bake a country loaf at because her oven runs hot",
                [0],
            ),
            (
                "Pedro recommends a dutch oven and less water; Julia says a cold overnight proof helps",
                [4, 1, 2],
            ),
        ],
        ["country loaf", "temperature", "oven"],
    ),
    "su110": (
        [
            ("Tomas shared his baguette recipe: 3% hydration, overnight proof in the fridge", [0]),
            ("Pedro will try it on Tuesday", [1]),
        ],
        ["baguette", "recipe"],
    ),
    "su115": (
        [
            ("Helena is trying a focaccia on Tuesday and asked for hydration tips", [0]),
            ("Leo bakes at 230°C with steam for 20 minutes, then 210°C", [3]),
        ],
        ["focaccia", "hydration"],
    ),
    "su120": (
        [
            ("Hugo asked whether anyone sells rye flour near Alcântara", [0]),
            ("Sofia says the mill shop in Marvila has great rye", [2]),
        ],
        ["rye flour", "Alcântara"],
    ),
    "su125": (
        [("Rita asked what temperature to bake brioche at because her oven runs hot", [0])],
        ["brioche", "temperature", "oven"],
    ),
}


def main() -> None:
    town = demo.town()
    names = {u["external_id"]: (u.get("display_name") or u["name"]) for u in town["users"]}
    by = {}
    for m in town["messages"]:
        by.setdefault(m["group"], []).append(m)
    short = {
        "ri": "g-riverside-runners",
        "ma": "g-maple-street-neighbours",
        "su": "g-sunday-bakers",
    }
    threads = {}
    for key, (points, phrases) in REFS.items():
        group = short[key[:2]]
        start = int(key[2:])
        msgs = by[group][start : start + 5]
        assert msgs[0]["reply_to"] is None and all(
            m["reply_to"] == msgs[0]["external_id"] for m in msgs[1:]
        ), key
        text = " ".join(m["text"] for m in msgs).lower()
        for p in phrases:
            assert p.lower() in text, (key, p)
        for point, offsets in points:
            assert offsets and all(0 <= o < 5 for o in offsets), key
            authors = {names[msgs[o]["author"]].split()[0] for o in offsets}
            firsts = {n.split()[0] for n in names.values()}
            named = {w.strip(",.;:()'s") for w in point.replace("'s", "").split()} & firsts
            assert named <= authors, (key, point, named, authors)  # a name only for who said it
        threads[(group, start)] = {
            "points": [
                {"text": t, "messages": [msgs[o]["external_id"] for o in offs]}
                for t, offs in points
            ],
            "keyphrases": phrases,
        }
    assert len(threads) == 78, len(threads)

    def windows(seed, count_per_group, sizes):
        rng = random.Random(seed)
        out = []
        for group, msgs in by.items():
            starts = list(range(0, 130, 5))
            rng.shuffle(starts)
            for s in sorted(starts[:count_per_group]):
                k = rng.choice(sizes)
                e = min(130, s + 5 * k)
                ts = [threads[(group, t)] for t in range(s, e, 5)]
                out.append(
                    {
                        "group": group,
                        "messages": [m["external_id"] for m in msgs[s:e]],
                        "reference_points": [p for t in ts for p in t["points"]],
                        "reference_keyphrases": sorted({k for t in ts for k in t["keyphrases"]}),
                    }
                )
        return out

    catch = windows(25, 22, [2, 3, 3, 4])
    topics = windows(26, 22, [3, 4, 5])
    with open(ROOT / "bench/data/catchup_windows.jsonl", "w") as f:
        for i, w in enumerate(catch):
            f.write(
                json.dumps(
                    {
                        "id": f"c{i:02d}",
                        "group": w["group"],
                        "messages": w["messages"],
                        "reference_points": w["reference_points"],
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )
    with open(ROOT / "bench/data/topic_windows.jsonl", "w") as f:
        for i, w in enumerate(topics):
            f.write(
                json.dumps(
                    {
                        "id": f"t{i:02d}",
                        "group": w["group"],
                        "messages": w["messages"],
                        "reference_keyphrases": w["reference_keyphrases"],
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )
    print(len(catch), len(topics), sum(len(w["reference_points"]) for w in catch))


if __name__ == "__main__":
    main()
