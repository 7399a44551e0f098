"""A deterministic demo community ("Riverside", a Lisbon-like town), built from templates and
word lists so that every run gives the same town, without downloads.

It goes through the same ingestion service host apps use. `townsquare seed demo` builds it;
`make run` does so on an empty database.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from townsquare.identity import issue_key
from townsquare.settings import IngestSettings
from townsquare.social.ingest import KINDS, ingest
from townsquare.storage.social_tables import Group
from townsquare.storage.tables import User

SEED = 20261129
START = datetime(2026, 10, 1, 8, 0, tzinfo=UTC)

FIRST = [
    "mia",
    "noah",
    "ines",
    "tiago",
    "ana",
    "leo",
    "sofia",
    "rui",
    "marta",
    "joao",
    "beatriz",
    "diego",
    "clara",
    "hugo",
    "lara",
    "nuno",
    "eva",
    "pedro",
    "rita",
    "tomas",
    "julia",
    "andre",
    "carla",
    "filipe",
    "helena",
    "ivo",
    "laura",
    "miguel",
]
LAST = [
    "silva",
    "costa",
    "ferreira",
    "santos",
    "oliveira",
    "pereira",
    "almeida",
    "sousa",
    "martins",
    "lopes",
    "rocha",
    "carvalho",
    "gomes",
    "ribeiro",
]
PLACES = [
    ("Alfama", 38.7115, -9.1300),
    ("Belém", 38.6979, -9.2068),
    ("Graça", 38.7180, -9.1310),
    ("Campo de Ourique", 38.7170, -9.1670),
    ("Parque das Nações", 38.7680, -9.0940),
    ("Cais do Sodré", 38.7060, -9.1440),
    ("Arroios", 38.7300, -9.1340),
    ("Alcântara", 38.7040, -9.1780),
    ("Benfica", 38.7510, -9.2020),
    ("Marvila", 38.7430, -9.1050),
]

CREATOR_A = "sol.rivera"  # street food and travel: terse, lowercase, emoji-heavy
CREATOR_B = "dr.amelia.hart"  # gardening and wellbeing: long, formal, signs off


def _members(rng: random.Random) -> list[dict[str, Any]]:
    rows = []
    for i, first in enumerate(FIRST):
        last = LAST[i % len(LAST)]
        rows.append(
            {
                "external_id": f"u-{first}",
                "name": first,
                "display_name": f"{first.capitalize()} {last.capitalize()}",
                "locale": rng.choice(["en", "en", "pt"]),
                "role": "member",
            }
        )
    rows.append(
        {
            "external_id": f"u-{CREATOR_A}",
            "name": CREATOR_A,
            "display_name": "Sol Rivera",
            "role": "creator",
        }
    )
    rows.append(
        {
            "external_id": f"u-{CREATOR_B}",
            "name": CREATOR_B,
            "display_name": "Dr Amelia Hart",
            "role": "creator",
        }
    )
    return rows


GROUP_TALK: dict[str, dict[str, list[str]]] = {
    "riverside-runners": {
        "opener": [
            "Who's in for {day} morning? Thinking {km} km along the river from {place}.",
            "Anyone tried the new loop past {place}? Heard it's {km} km and mostly flat.",
            "Reminder: the {race} is in {n} weeks, registration closes {day}!",
            "Pace group for {day}: aiming for {pace} per km, all welcome.",
            "My knee is complaining after {day}'s long run. Any physio in {place}?",
        ],
        "reply": [
            "I'm in! Meet at the kiosk at 7?",
            "Count me in, but I'll stick to {pace}.",
            "Too hot for me, let's go at 6:30 instead.",
            "Did it last week, the hills near {place} are brutal.",
            "Signed up for the {race} already 🙌",
            "Try foam rolling and easy {km} km for a few days.",
            "There's a good physio next to the market in {place}.",
            "Raining {day}? I'll bring a jacket.",
            "Can we do the {km} km version? I'm tapering.",
            "New shoes arrived, testing them {day}!",
        ],
    },
    "maple-street-neighbours": {
        "opener": [
            "Has anyone seen a grey cat near {place}? She answers to Pimenta.",
            "Street party planning: {day} afternoon, who can bring chairs?",
            "The bins weren't collected again on {day}. Should we call the council?",
            "Looking for a reliable plumber around {place}, any recommendations?",
            "Free: a box of kids' books and a lamp, outside number {n} until {day}.",
            "Power cut in {place} this evening, anyone else?",
        ],
        "reply": [
            "I think I saw her by the bakery this morning!",
            "I can bring 6 chairs and a table.",
            "I'll call them tomorrow and report back.",
            "We used Sr. Paulo, quick and fair prices.",
            "Grabbed the lamp, thank you so much!",
            "Yes, ours is out too since 7pm.",
            "Happy to help set up on {day}.",
            "Let's make a shared list of who brings what.",
            "Same problem last month, they came after two calls.",
            "Great idea, count our family in.",
        ],
    },
    "sunday-bakers": {
        "opener": [
            "My sourdough came out flat again. Starter is {n} days old, too young?",
            "Trying a {bread} this {day}, any tips on hydration?",
            "What temperature do you bake {bread} at? My oven runs hot.",
            "Sharing my {bread} recipe: {n}% hydration, overnight proof in the fridge.",
            "Anyone selling rye flour near {place}?",
        ],
        "reply": [
            "Give it another week and feed it twice a day.",
            "Go lower on water, maybe 70% first.",
            "I do 230°C with steam for 20 min, then 210°C.",
            "The mill shop in {place} has great rye.",
            "Looks amazing! Saving this one.",
            "Use a dutch oven, it changed everything for me.",
            "Cold proof overnight helps with the flavour.",
            "Mine was flat too until I shaped tighter.",
            "Trying your recipe {day}!",
            "Crumb shot please 😍",
        ],
    },
}
FILL = {
    "day": ["Saturday", "Sunday", "Wednesday", "Friday", "Tuesday"],
    "km": ["5", "8", "10", "12", "21"],
    "pace": ["5:30", "6:00", "6:30", "5:00"],
    "race": ["Lisbon Half", "Riverside 10k", "Belém Night Run"],
    "n": ["2", "3", "4", "5", "12", "75"],
    "bread": ["focaccia", "rye loaf", "baguette", "brioche", "country loaf"],
}


def _fill(rng: random.Random, template: str) -> str:
    values = {k: rng.choice(v) for k, v in FILL.items()}
    values["place"] = rng.choice(PLACES)[0]
    return template.format(**values)


def _groups(
    rng: random.Random, users: list[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    groups, messages = [], []
    for index, (name, talk) in enumerate(GROUP_TALK.items()):
        members = sorted(rng.sample(users, 12))
        group_id = f"g-{name}"
        groups.append(
            {
                "external_id": group_id,
                "name": name.replace("-", " ").title(),
                "kind": "chat",
                "description": f"The {name.replace('-', ' ')} group chat.",
                "members": [
                    {"user": u, "role": "moderator" if i == 0 else "member"}
                    for i, u in enumerate(members)
                ],
            }
        )
        when = START + timedelta(hours=index)
        thread_start = None
        for n in range(130):
            when += timedelta(minutes=rng.randint(7, 240))
            new_thread = n % 5 == 0
            text = _fill(rng, rng.choice(talk["opener" if new_thread else "reply"]))
            external = f"m-{name}-{n:03d}"
            if new_thread:
                thread_start = external
            messages.append(
                {
                    "external_id": external,
                    "group": group_id,
                    "author": rng.choice(members),
                    "text": text,
                    "reply_to": None if new_thread else thread_start,
                    "created_at": when.isoformat(),
                }
            )
    return groups, messages


POST_TOPICS = [
    ("Sunset from {place} tonight, the river was on fire.", True),
    ("Just finished my first {km} km run without stopping!", False),
    ("Homemade {bread} for breakfast. Recipe in the bakers group.", True),
    ("Our street party on {day} was the best one yet, thank you all.", True),
    ("Selling my old bike, see my shop. Great for the river path.", False),
    ("Found a lovely café in {place}, the pastéis are still warm at 9am.", True),
    ("Lost keys near {place} on {day}, blue keyring. Please share!", False),
    ("Garden update: tomatoes finally turning red.", True),
]
COMMENTS = [
    "Gorgeous!",
    "Congrats, that's huge!",
    "Which café? I need to go.",
    "Shared it, fingers crossed.",
    "Looks delicious 😋",
    "So proud of this neighbourhood.",
    "Where exactly was this?",
    "Amazing, well done!",
    "I walked past there today!",
    "Recipe please!",
]


def _posts(
    rng: random.Random, users: list[str], groups: list[dict[str, Any]]
) -> tuple[list[Any], list[Any]]:
    posts, comments = [], []
    for n in range(100):
        template, has_image = POST_TOPICS[n % len(POST_TOPICS)]
        group = groups[n % 3] if n % 4 == 0 else None
        pool = [m["user"] for m in group["members"]] if group else users
        when = START + timedelta(hours=7 * n + rng.randint(0, 6))
        posts.append(
            {
                "external_id": f"p-{n:03d}",
                "author": rng.choice(pool),
                "group": group["external_id"] if group else None,
                "text": _fill(rng, template),
                "image_url": f"https://img.example/posts/{n:03d}.jpg" if has_image else None,
                "created_at": when.isoformat(),
            }
        )
        for c in range(rng.randint(0, 5)):
            comments.append(
                {
                    "external_id": f"c-{n:03d}-{c}",
                    "post": f"p-{n:03d}",
                    "author": rng.choice(pool),
                    "text": rng.choice(COMMENTS),
                    "created_at": (when + timedelta(minutes=10 * (c + 1))).isoformat(),
                }
            )
    return posts, comments


FAN_QUESTIONS = {
    "food": [
        "Where did you eat the {dish} in your last video?",
        "Is the {dish} spot in {place} worth the queue?",
        "Any cheap {dish} recommendations for a student budget?",
        "Do they have vegetarian {dish} there?",
    ],
    "travel": [
        "What's your top tip for a weekend in {place}?",
        "How do you pack so light for trips?",
        "Is {place} better in spring or autumn?",
        "Which camera do you film with?",
    ],
    "garden": [
        "My {plant} leaves are turning yellow, what am I doing wrong?",
        "When should I repot my {plant}?",
        "How often should I water {plant} in summer?",
        "Is {plant} safe around cats?",
    ],
    "wellbeing": [
        "How do you keep a morning routine on busy days?",
        "Any advice for sleeping better?",
        "How do you handle stress before exams?",
        "What do you eat before a long walk?",
    ],
}
A_REPLIES = {
    "food": [
        "omg the {dish} at the tiny place behind the market 🔥🔥",
        "yesss worth it!! go before 12 tho ⏰",
        "haha student budget = the {dish} bar in {place} 💸🙌",
        "they do!! ask for the veggie one 🌱",
        "lol i went back 3x this week 😅🔥",
    ],
    "travel": [
        "pack half of what u think 🎒✨",
        "spring 100% 🌸",
        "just my phone + a tiny mic 📱🎤",
        "get lost on purpose in {place} 😍",
        "early trains = no crowds 🚆💛",
    ],
    "thanks": [
        "ahh thank u!! 💛💛",
        "love this, thank u 🙏",
        "u made my day 🥹✨",
        "haha yes!! 🔥",
        "means a lot 💛",
    ],
}
B_REPLIES = {
    "garden": [
        "Dear {fan}, thank you for your question. Yellowing leaves on a {plant} usually point to "
        "overwatering; I would recommend letting the top few centimetres of soil dry out between "
        "waterings and checking that the pot drains freely. Kind regards, Amelia",
        "Dear {fan}, thank you for writing. The best time to repot a {plant} is early spring, when it "
        "begins its growing season; choose a pot only slightly larger than the current one. "
        "With warm wishes, Amelia",
        "Dear {fan}, that is a very sensible question. In summer, a {plant} generally appreciates "
        "water once the surface feels dry, which may mean every four or five days. Kind regards, Amelia",
        "Dear {fan}, thank you for asking. Please do check with your veterinarian, but {plant} is "
        "generally considered safe; I would nevertheless keep it out of reach. Kind regards, Amelia",
    ],
    "wellbeing": [
        "Dear {fan}, thank you for your kind message. On busy days I keep my routine deliberately "
        "small: a glass of water, five minutes of stretching, and a short walk outside. Consistency "
        "matters far more than length. Kind regards, Amelia",
        "Dear {fan}, I appreciate you sharing this. For better sleep, I would suggest a consistent "
        "bedtime, a dark and cool room, and setting screens aside an hour beforehand. "
        "With warm wishes, Amelia",
        "Dear {fan}, exams are demanding, and it is entirely natural to feel the pressure. Short, "
        "planned breaks and regular meals help considerably. You are doing well. Kind regards, Amelia",
        "Dear {fan}, before a long walk I would recommend something light yet sustaining, such as "
        "oats with fruit, and plenty of water. Kind regards, Amelia",
    ],
    "thanks": [
        "Dear {fan}, thank you very much for your generous words; they are greatly appreciated. "
        "Kind regards, Amelia",
        "Dear {fan}, how lovely to hear from you. I am delighted the video was helpful. "
        "With warm wishes, Amelia",
    ],
}
FAN_THANKS = [
    "Love your videos!",
    "Thank you so much for the tip!",
    "You're the best ❤️",
    "This helped a lot, thanks!",
]
DISHES = ["bifana", "pastel de nata", "grilled sardines", "bacalhau", "francesinha", "ramen"]
PLANTS = ["monstera", "basil", "tomato plant", "fiddle leaf fig", "lavender", "snake plant"]


def _dms(rng: random.Random, fans: list[str]) -> tuple[list[Any], list[Any]]:
    threads, messages = [], []
    for creator, topics, replies in [
        (CREATOR_A, ["food", "travel"], A_REPLIES),
        (CREATOR_B, ["garden", "wellbeing"], B_REPLIES),
    ]:
        for t in range(26):
            fan = fans[(t * 7 + len(creator)) % len(fans)]
            thread = f"dm-{creator}-{t:02d}"
            threads.append({"external_id": thread, "participants": [f"u-{creator}", fan]})
            when = START + timedelta(days=t % 28, hours=rng.randint(8, 20))
            for k in range(6):
                topic = rng.choice(topics) if k % 3 != 2 else "thanks"
                place = rng.choice(PLACES)[0]
                words = {
                    "dish": rng.choice(DISHES),
                    "plant": rng.choice(PLANTS),
                    "place": place,
                    "fan": fan.removeprefix("u-").capitalize(),
                }
                question = (
                    rng.choice(FAN_THANKS)
                    if topic == "thanks"
                    else rng.choice(FAN_QUESTIONS[topic]).format(**words)
                )
                reply = rng.choice(replies[topic]).format(**words)
                when += timedelta(hours=rng.randint(2, 30))
                messages.append(
                    {
                        "external_id": f"{thread}-{k}q",
                        "thread": thread,
                        "author": fan,
                        "text": question,
                        "created_at": when.isoformat(),
                    }
                )
                messages.append(
                    {
                        "external_id": f"{thread}-{k}r",
                        "thread": thread,
                        "author": f"u-{creator}",
                        "text": reply,
                        "created_at": (when + timedelta(minutes=rng.randint(5, 300))).isoformat(),
                    }
                )
    return threads, messages


CATALOGUE: dict[str, dict[str, Any]] = {
    "bikes": {
        "items": [
            "city bike",
            "kids' bike",
            "mountain bike",
            "road bike",
            "folding bike",
            "cargo bike",
        ],
        "brands": ["Trek", "Decathlon Btwin", "Giant", "Brompton", "Specialized", "Orbea"],
        "extra": lambda r: {
            "frame_size": r.choice(["XS", "S", "M", "L", "14 in", "16 in", "20 in"]),
            "gears": r.choice([1, 3, 7, 18, 21]),
            "colour": r.choice(["red", "blue", "black", "green", "white"]),
        },
        "price": (40, 900),
    },
    "furniture": {
        "items": ["oak dining table", "armchair", "bookshelf", "desk", "sofa", "bedside table"],
        "brands": ["IKEA", "Habitat", "vintage", "handmade", "Muji"],
        "extra": lambda r: {
            "material": r.choice(["oak", "pine", "walnut", "metal", "velvet", "linen"]),
            "width_cm": r.choice([45, 60, 80, 120, 160, 200]),
        },
        "price": (15, 650),
    },
    "electronics": {
        "items": ["laptop", "smartphone", "bluetooth speaker", "monitor", "tablet", "headphones"],
        "brands": ["Apple", "Samsung", "Lenovo", "Sony", "JBL", "Dell"],
        "extra": lambda r: {
            "storage_gb": r.choice([64, 128, 256, 512]),
            "colour": r.choice(["black", "silver", "white"]),
        },
        "price": (25, 1400),
    },
    "clothing": {
        "items": [
            "rain jacket",
            "wool coat",
            "running shoes",
            "denim jacket",
            "summer dress",
            "hiking boots",
        ],
        "brands": ["Patagonia", "Zara", "Nike", "Levi's", "The North Face", "Salomon"],
        "extra": lambda r: {
            "size": r.choice(["S", "M", "L", "XL", "38", "40", "42", "44"]),
            "colour": r.choice(["navy", "black", "beige", "olive", "red"]),
        },
        "price": (8, 220),
    },
    "books": {
        "items": [
            "cookbook",
            "travel guide to Portugal",
            "children's picture book",
            "sci-fi novel",
            "Portuguese grammar",
            "gardening handbook",
        ],
        "brands": ["Penguin", "Lonely Planet", "Porto Editora", "Usborne"],
        "extra": lambda r: {
            "language": r.choice(["English", "Portuguese"]),
            "pages": r.choice([120, 240, 320, 480]),
        },
        "price": (3, 35),
    },
    "kids": {
        "items": [
            "stroller",
            "high chair",
            "wooden toy kitchen",
            "car seat",
            "balance bike",
            "baby carrier",
        ],
        "brands": ["Chicco", "Stokke", "IKEA", "Maxi-Cosi", "Ergobaby"],
        "extra": lambda r: {
            "age_range": r.choice(["0-1 years", "1-3 years", "3-6 years"]),
            "colour": r.choice(["grey", "blue", "pink", "natural wood"]),
        },
        "price": (10, 450),
    },
    "garden": {
        "items": [
            "lawn mower",
            "terracotta pots (set of 4)",
            "garden bench",
            "hose reel",
            "raised bed kit",
            "pruning shears",
        ],
        "brands": ["Bosch", "Gardena", "Fiskars", "handmade"],
        "extra": lambda r: {"material": r.choice(["terracotta", "teak", "steel", "plastic"])},
        "price": (5, 380),
    },
    "sports": {
        "items": [
            "yoga mat",
            "tennis racket",
            "surfboard",
            "dumbbell set",
            "camping tent",
            "skateboard",
        ],
        "brands": ["Decathlon", "Wilson", "Quiksilver", "Adidas", "Vango"],
        "extra": lambda r: {
            "weight_kg": r.choice([1, 2, 5, 10, 20]),
            "colour": r.choice(["blue", "black", "orange", "purple"]),
        },
        "price": (6, 520),
    },
    "music": {
        "items": [
            "acoustic guitar",
            "digital piano",
            "ukulele",
            "vinyl record collection",
            "DJ controller",
            "violin",
        ],
        "brands": ["Yamaha", "Fender", "Roland", "Pioneer", "Casio"],
        "extra": lambda r: {"includes_case": r.choice([True, False])},
        "price": (20, 900),
    },
    "kitchen": {
        "items": [
            "espresso machine",
            "cast iron pan",
            "stand mixer",
            "knife set",
            "dutch oven",
            "toaster",
        ],
        "brands": ["De'Longhi", "Le Creuset", "KitchenAid", "Victorinox", "Smeg"],
        "extra": lambda r: {
            "colour": r.choice(["red", "cream", "black", "steel"]),
            "capacity_l": r.choice([1, 2, 4, 5]),
        },
        "price": (8, 480),
    },
}
CONDITIONS = ["new", "like_new", "good", "good", "fair", "for_parts"]


def _listings(rng: random.Random, sellers: list[str]) -> list[dict[str, Any]]:
    rows = []
    categories = list(CATALOGUE)
    for n in range(500):
        category = categories[n % len(categories)]
        spec = CATALOGUE[category]
        item, brand = rng.choice(spec["items"]), rng.choice(spec["brands"])
        condition = rng.choice(CONDITIONS)
        low, high = spec["price"]
        price = round(
            rng.uniform(low, high) * (0.5 if condition in {"fair", "for_parts"} else 1), 0
        )
        place, lat, lon = rng.choice(PLACES)
        attributes: dict[str, Any] = {"brand": brand, **spec["extra"](rng)}
        rows.append(
            {
                "external_id": f"l-{n:04d}",
                "seller": rng.choice(sellers),
                "title": f"{brand} {item}"
                if brand not in {"vintage", "handmade"}
                else f"{brand.capitalize()} {item}",
                "attributes": attributes,
                "price": f"{max(price, 1):.2f}",
                "currency": "EUR",
                "category": category,
                "condition": condition,
                "location": place,
                "lat": round(lat + rng.uniform(-0.004, 0.004), 5),
                "lon": round(lon + rng.uniform(-0.004, 0.004), 5),
                "images": [
                    f"https://img.example/listings/{n:04d}-{i}.jpg"
                    for i in range(rng.randint(1, 3))
                ],
                "status": "active" if n % 17 else rng.choice(["sold", "draft"]),
            }
        )
    return rows


REEL_TOPICS = {
    "cooking": (
        [
            "{dish} in 60 seconds",
            "The crispiest {dish} you'll ever make",
            "Street-food tour: {dish} edition",
        ],
        "Today we're making {dish}. Start with a hot pan, a pinch of salt, and don't rush it.",
        ["food", "recipe", "lisbon"],
    ),
    "running": (
        ["Riverside {km} km at sunrise", "How I trained for the {race}", "Form tips for easy runs"],
        "Keep your shoulders relaxed and your steps short. We're running {km} k along the river today.",
        ["running", "fitness", "river"],
    ),
    "gardening": (
        ["Repotting a {plant}", "Balcony garden tour", "Saving an overwatered {plant}"],
        "This {plant} needs bright indirect light. Water only when the top of the soil is dry.",
        ["garden", "plants", "howto"],
    ),
    "travel": (
        ["48 hours in {place}", "Hidden viewpoints in {place}", "Tram 28 without the crowds"],
        "Welcome to {place}! Go early, wear comfy shoes, and follow the smell of grilled sardines.",
        ["travel", "lisbon", "citywalk"],
    ),
    "diy": (
        ["Fixing a wobbly chair", "Upcycling an old bookshelf", "Tiny kitchen makeover"],
        "Grab sandpaper, wood glue and clamps. This took me one afternoon and cost under ten euros.",
        ["diy", "home", "upcycle"],
    ),
    "pets": (
        ["Pimenta the cat's day out", "Teaching my dog to wait", "Cat vs. cardboard box"],
        "Treats, patience and short sessions: five minutes a day is plenty for a new trick.",
        ["pets", "cats", "dogs"],
    ),
    "music": (
        ["Fado on a Tuesday night", "Ukulele in 5 chords", "Busking by the river"],
        "Three chords and a good melody. Here is how the chorus goes, slowly first.",
        ["music", "fado", "live"],
    ),
}


def _reels(
    rng: random.Random, creators: list[str], groups: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    rows = []
    topics = list(REEL_TOPICS)
    for n in range(300):
        topic = topics[n % len(topics)]
        captions, transcript, tags = REEL_TOPICS[topic]
        words = {k: rng.choice(v) for k, v in FILL.items()} | {
            "dish": rng.choice(DISHES),
            "plant": rng.choice(PLANTS),
            "place": rng.choice(PLACES)[0],
        }
        creator = (
            f"u-{CREATOR_A}"
            if topic in {"cooking", "travel"} and n % 2
            else (f"u-{CREATOR_B}" if topic == "gardening" and n % 2 else rng.choice(creators))
        )
        group = groups[n % 3] if n % 10 == 0 else None
        if group is not None and creator not in [m["user"] for m in group["members"]]:
            creator = group["members"][1]["user"]
        rows.append(
            {
                "external_id": f"r-{n:03d}",
                "creator": creator,
                "caption": rng.choice(captions).format(**words),
                "transcript": transcript.format(**words),
                "tags": [*tags, topic],
                "duration_s": float(rng.randint(12, 90)),
                "media_url": f"https://video.example/reels/{n:03d}.mp4",
                "visibility": "group" if group else "public",
                "group": group["external_id"] if group else None,
                "created_at": (START + timedelta(hours=5 * n)).isoformat(),
            }
        )
    return rows


def _interactions(
    rng: random.Random, users: list[str], reels: list[Any], listings: list[Any]
) -> list[Any]:
    rows = []
    public_reels = [r for r in reels if r["visibility"] == "public"]
    for user in users:
        favourite = rng.sample(list(REEL_TOPICS), 2)
        for k in range(45):
            reel = rng.choice(public_reels)
            liked = reel["tags"][-1] in favourite
            action = rng.choices(
                ["view", "like", "save", "hide"],
                weights=[5, 4 if liked else 1, 2 if liked else 0.5, 0.2 if liked else 1],
            )[0]
            rows.append(
                {
                    "external_id": f"i-{user}-r{k}",
                    "user": user,
                    "target_kind": "reel",
                    "target": reel["external_id"],
                    "action": action,
                    "value": reel["duration_s"] * rng.uniform(0.2, 1.0)
                    if action == "view"
                    else None,
                }
            )
        for k in range(15):
            listing = rng.choice(listings)
            if listing["status"] != "active":
                continue
            rows.append(
                {
                    "external_id": f"i-{user}-l{k}",
                    "user": user,
                    "target_kind": "listing",
                    "target": listing["external_id"],
                    "action": rng.choice(["view", "view", "save", "like"]),
                }
            )
    return rows


# kinds dated together: each family is moved so that its newest row is a few minutes old
_TIMELINES = (("messages",), ("posts", "comments"), ("dm-messages",), ("reels",))


def _date_relative_to(rows: dict[str, list[dict[str, Any]]], now: datetime) -> None:
    """Move each timeline so that it ends ten minutes before ``now``: the demo's group chats
    always have messages from the last day (catch-up's default window), whenever it is seeded."""
    for kinds in _TIMELINES:
        dated = [r for kind in kinds for r in rows[kind] if "created_at" in r]
        newest = max(datetime.fromisoformat(r["created_at"]) for r in dated)
        shift = (now - timedelta(minutes=10) - newest) // timedelta(minutes=1)
        for row in dated:
            moved = datetime.fromisoformat(row["created_at"]) + timedelta(minutes=shift)
            row["created_at"] = moved.isoformat()


def town(now: datetime | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every row of the demo town, by kind, in ingestion order, dated up to ``now`` (default:
    the current time)."""
    rng = random.Random(SEED)
    users = _members(rng)
    members = [u["external_id"] for u in users if u["role"] == "member"]
    everyone = [u["external_id"] for u in users]
    groups, messages = _groups(rng, members)
    posts, comments = _posts(rng, everyone, groups)
    threads, dms = _dms(rng, members)
    listings = _listings(rng, members)
    reels = _reels(rng, members, groups)
    rows = {
        "users": users,
        "groups": groups,
        "messages": messages,
        "posts": posts,
        "comments": comments,
        "dm-threads": threads,
        "dm-messages": dms,
        "listings": listings,
        "reels": reels,
        "interactions": _interactions(rng, everyone, reels, listings),
    }
    _date_relative_to(rows, now or datetime.now(UTC))
    return rows


DEMO_LOGINS = ("mia", CREATOR_A, CREATOR_B)


def is_seeded(db: Session) -> bool:
    return bool(db.scalar(select(func.count()).select_from(Group)))


def seed(
    db: Session, settings: IngestSettings, progress: Callable[[str, int], None] | None = None
) -> dict[str, str]:
    """Ingest the demo town and return login keys for a few demo users (shown once)."""
    for kind, rows in town().items():
        report = ingest(db, KINDS[kind], rows, settings=settings, actor=None)
        if progress is not None:
            progress(kind, report.created + report.updated + report.unchanged)
    keys = {}
    for name in DEMO_LOGINS:
        user = db.scalar(select(User).where(User.name == name))
        assert user is not None
        keys[name] = issue_key(db, user, label="demo")
    return keys
