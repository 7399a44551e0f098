"""Short, high-precision rules for the requests a sentence classifier is the wrong tool for.

A classifier over sentence meaning learns topics; some harms are better told by their words and
their frame. Each rule here needs both a harmful object and an asking frame (how to, make,
find...), so a topic alone never fires it ("what is sarin?", "how do bomb disposal robots
work?", "how do I support a friend who was assaulted?"). They are precise rather than complete:
what they miss is the classifier's job (``safety/moderation.py``).

- ``request_codes``: hazard codes a member's text asks for (S1, S3, S4, S7, S9, S11, S12, X1,
  X3, X4).
- ``reply_markup``: markup in a reply that would make a client fetch an attacker's URL.
- ``instructions_in``: instructions to the assistant inside third-party content (a post, a
  listing, a group message), which the features treat as data, never as orders.
- ``contentless``: a follow-up made only of conversational filler ("Tell me more").
- ``contact_details``: payment instructions, phone numbers, IBANs and links in a text; an
  answer built from other members' content may repeat them only when the member's own request
  holds them.

Every pattern was written against the hard negatives in ``safety/data/hard_negatives.jsonl``
and the wheels' data (never against bench/data/safety, the evaluation sets).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache

_F = re.IGNORECASE | re.DOTALL


def _any(words: Iterable[str]) -> str:
    return "(?:" + "|".join(words) + ")"


# --- pieces ---------------------------------------------------------------------------------
_ASK = _any(
    (
        r"how (?:do|can|could|would|should|might|will|to|does|is) (?:i|we|you|one|someone|u|"
        r"people|a person|anyone)",
        r"how to",
        r"how i (?:can|could)",
        r"(?:best|easiest|quickest|fastest|simplest|cheapest|safest) (?:way|method)s?",
        r"ways? to",
        r"steps? (?:to|for)",
        r"instructions?",
        r"guide",
        r"tutorial",
        r"recipe",
        r"teach me",
        r"show me",
        r"tell me",
        r"explain",
        r"help me",
        r"give me",
        r"walk me through",
        r"i (?:want|need|am going|'m going|plan|intend) to",
        r"i wanna",
        r"let'?s",
        r"where (?:can|do) i",
        r"what'?s the best",
    )
)
_MAKE = _any(
    (
        r"make",
        r"making",
        r"build",
        r"building",
        r"assemble",
        r"construct",
        r"create",
        r"cook",
        r"mix",
        r"prepare",
        r"produce",
        r"synthesi[sz]e",
        r"manufacture",
        r"put together",
        r"rig",
        r"print",
        r"3d[- ]print",
    )
)
# "bath bomb", "seed bomb", "smoke bomb" for a photo, "photo bomb"...: (?<!...) one by one
_NOT_TOY = (
    "".join(
        f"(?<!{w} )"
        for w in ("bath", "seed", "smoke", "photo", "glitter", "calorie", "stink", "paint", "water")
    )
    + r"(?<!the )"
)
_EXPLOSIVE = _NOT_TOY + _any(
    (
        r"(?:(?:pipe|nail|car|truck|letter|pressure[- ]cooker|fertili[sz]er|suicide) )?bombs?",
        r"explosives?",
        r"explosive devices?",
        r"i\.?e\.?d\.?s?",
        r"molotov(?: cocktails?)?",
        r"napalm",
        r"thermite",
        r"grenades?",
        r"detonators?",
        r"blasting caps?",
        r"tatp",
        r"semtex",
        r"dynamite",
        r"landmines?",
        r"ghost guns?",
        r"untraceable (?:gun|firearm|weapon)s?",
        r"zip ?guns?",
        r"(?:gun|firearm) silencers?",
        r"3d[- ]printed (?:gun|firearm|weapon)s?",
    )
)
_CBRN = _any(
    (
        r"sarin",
        r"soman",
        r"tabun",
        r"vx(?: gas| nerve agent)?",
        r"novichok",
        r"nerve (?:agent|gas)s?",
        r"mustard gas",
        r"phosgene",
        r"chlorine gas",
        r"(?:hydrogen )?cyanide gas",
        r"ricin",
        r"abrin",
        r"anthrax",
        r"botulinum(?: toxin)?",
        r"smallpox",
        r"(?:the )?plague (?:bacteria|bacterium)",
        r"bio-?weapons?",
        r"biological (?:weapon|agent)s?",
        r"chemical weapons?",
        r"dirty bombs?",
        r"radiological (?:weapon|bomb|device)s?",
        r"nuclear (?:bomb|weapon|device)s?",
        r"atomic bombs?",
        r"weapons?-grade",
        r"enrich(?:ed|ing)? uranium",
        r"plutonium",
        r"toxic gas(?:es)?",
        r"poison gas(?:es)?",
        r"radioactive (?:material|sources?)",
    )
)
_CBRN_VERB = _any(
    (
        _MAKE,
        r"weaponi[sz]e",
        r"cultur(?:e|ing)",
        r"cultivat(?:e|ing)",
        r"grow",
        r"extract",
        r"spread",
        r"release",
        r"disperse",
        r"aerosoli[sz]e",
        r"deploy",
        r"obtain",
        r"acquire",
        r"buy",
        r"steal",
        r"get hold of",
        r"get",
        r"(?:do|would|will) (?:i|we|you) need",
        r"recipe",
        r"synthesis",
        r"use (?:it )?on",
    )
)
# after the agent's name, "get" and "need" are too loose ("how did the anthrax case get solved")
_CBRN_VERB_AFTER = _CBRN_VERB.replace(r"|get|", "|").replace(
    r"|(?:do|would|will) (?:i|we|you) need", ""
)
_PERSON = _any(
    (
        r"someone",
        r"somebody",
        r"anyone",
        r"a (?:person|man|woman|child|kid|baby|girl|boy|guy|stranger|cop|police officer|"
        r"officer|teacher|student|homeless person|prisoner|neighbou?r)",
        r"people",
        r"my (?:wife|husband|girlfriend|boyfriend|partner|ex|mother|mum|mom|father|dad|"
        r"brother|sister|son|daughter|child|kid|baby|boss|co-?worker|colleague|neighbou?r|"
        r"landlord|teacher|classmate|room-?mate|flat-?mate|business partner|rival|enemy)",
        r"(?:him|her|them)",
        r"the (?:guy|man|woman|kid|kids|child|children|neighbou?rs?|people|family|police|cop|"
        r"officer|teacher|boss|president|mayor|politician|seller|buyer|homeless)",
        r"(?:a|the) (?:crowd|school|class|mosque|church|synagogue|temple|festival|concert)",
        r"(?-i:[A-Z][a-z]+)",
    )
)
_HARM = _any(
    (
        r"kill",
        r"murder",
        r"stab",
        r"strangle",
        r"choke",
        r"suffocate",
        r"smother",
        r"poison",
        r"shoot",
        r"behead",
        r"decapitate",
        r"kidnap",
        r"abduct",
        r"torture",
        r"maim",
        r"beat up",
        r"hurt",
        r"injure",
        r"assault",
        r"run over",
        r"drown",
        r"set fire to",
        r"burn down",
        r"attack",
    )
)
_COVER = _any(
    (
        r"without (?:getting caught|being (?:caught|seen|traced|detected|found|noticed)|"
        r"leaving (?:any )?(?:marks|bruises|evidence|a trace|traces|dna)|anyone (?:noticing|"
        r"knowing|finding out|seeing)|the (?:bruises|marks) showing|(?:him|her|them) noticing)",
        r"get away with",
        r"(?:hide|get rid of|dispose of|dissolve) (?:the|a|his|her) (?:body|corpse|bodies)",
        r"make it (?:look|seem) (?:like )?(?:an? )?(?:accident|natural|suicide)",
        r"hardest to (?:detect|trace)",
        r"(?:untraceable|undetectable) (?:poison|way)",
        r"so (?:that )?(?:no one|nobody) (?:knows|notices|finds out)",
    )
)
# games, fiction and sport: "how do I kill the dragon in Skyrim" is not a threat
_PLAY = _any(
    (
        r"game",
        r"gaming",
        r"final boss",
        r"boss (?:fight|battle)",
        r"level",
        r"quest",
        r"npc",
        r"player",
        r"minecraft",
        r"fortnite",
        r"gta",
        r"skyrim",
        r"zelda",
        r"pok[eé]mon",
        r"roblox",
        r"sims",
        r"d&d",
        r"dnd",
        r"rpg",
        r"mmo",
        r"novel",
        r"story",
        r"fiction",
        r"film",
        r"movie",
        r"book",
        r"screenplay",
        r"chess",
        r"paintball",
        r"laser tag",
        r"boxing",
        r"judo",
        r"karate",
        r"fencing",
        r"zombies?",
        r"dragons?",
        r"match",
        r"team",
        r"race",
        r"football",
        r"soccer",
        r"rugby",
        r"basketball",
        r"tournament",
    )
)
_MINOR = _any(
    (
        r"(?:[1-9]|1[0-7])[- ]?(?:yo|y/?o|year[- ]olds?|years? old)",
        r"child(?:ren)?",
        r"kids?",
        r"minors?",
        r"under-?age",
        r"pre-?teens?",
        r"school ?(?:girl|boy)s?",
        r"little (?:girl|boy)s?",
        r"young (?:teens?|girls|boys|students?)",
        r"teen(?:age)? (?:girl|boy)s?",
        r"teen(?:ager)?s",
        r"toddlers?",
        r"babysitter and the kids",
    )
)
_SEXUAL = _any(
    (
        r"nudes?",
        r"naked",
        r"sexy",
        r"sexual(?:ly)?",
        r"erotic",
        r"porn\w*",
        r"explicit",
        r"lewd",
        r"undress\w*",
        r"sex",
        r"touching",
    )
)
_PROTECT = _any(
    (
        r"talk (?:to|with)",
        r"explain",
        r"teach",
        r"educat\w*",
        r"protect\w*",
        r"prevent\w*",
        r"signs?",
        r"report\w*",
        r"safe(?:ty)?",
        r"parental",
        r"books?",
        r"puberty",
        r"consent",
        r"warn\w*",
        r"recogni[sz]e",
        r"support",
        r"help (?:my|a|her|him|them)",
        r"victims?",
        r"survivors?",
        r"abused\b",
        r"what to do if",
        r"was (?:raped|assaulted|abused|groped|molested)",
        r"legal age",
        r"law",
    )
)
_SEX_CRIME = _any(
    (
        r"rape",
        r"raping",
        r"molest",
        r"grope",
        r"groping",
        r"sexually (?:assault|abuse|harass)",
        r"date[- ]rape",
        r"roofie",
        r"upskirt",
        r"creepshots?",
        r"revenge porn",
        r"sextort\w*",
        r"force (?:myself|himself) on",
        r"flash (?:women|girls|people)",
        r"sexual (?:harassment|assault|abuse)",
    )
)
_SELF = _any(
    (
        r"kill(?:ing)? myself",
        r"end(?:ing)? (?:my (?:own )?life|it all)",
        r"take my (?:own )?life",
        r"commit(?:ting)? suicide",
        r"suicide (?:note|method|plan)s?",
        r"(?:want|wanted|wanna|going|plan(?:ning)?|ready|tempted|deserve) to die",
        r"i want to be dead",
        r"better off (?:dead|without me)",
        r"(?:don'?t|do not) want to (?:be alive|live|wake up|exist|be here)",
        r"(?:cut|cutting|burn|burning|hurt|hurting|harm|harming|starve|starving) myself",
        r"my self[- ]harm",
        r"(?:cut|slit) my wrists?",
        r"make myself (?:vomit|throw up|sick)",
        r"(?:would|will|could|enough to) kill me",
        r"overdose (?:without|painless|to die)",
        r"painless(?:ly)? (?:way|method)s? to die",
        r"and not survive",
        r"pro-?ana",
        r"pro-?mia",
        r"used to (?:die|kill (?:myself|yourself))",
        r"hang myself",
        r"jump(?:ing)? (?:off|from) (?:a|the)\b.{0,40}\b(?:bridge|building|roof|cliff|tower)",
        r"overdose on",
        r"(?:rather|prefer to) be dead",
        r"won'?t need (?:them|it|anything) (?:anymore|any more)",
        r"(?:wish|want) (?:i|to) (?:could )?(?:go to )?sleep and never wake",
        r"tired of (?:living|life|being alive)",
        r"don'?t (?:want|think i'?ll) (?:to )?be (?:here|alive) (?:much longer|anymore|next)",
    )
)
_TELL_DIE = _any(
    (
        r"(?:go )?kill yourself",
        r"\bkys\b",
        r"(?:tell|telling) (?:him|her|them|someone|people|(?-i:[A-Z][a-z]+)) to (?:kill (?:himself|"
        r"herself|themselves)|die)",
    )
)
_GORE = _any(
    (
        r"blood",
        r"bloody",
        r"guts",
        r"gore",
        r"gory",
        r"decapitat\w*",
        r"behead\w*",
        r"dismember\w*",
        r"flay\w*",
        r"skinned",
        r"mutilat\w*",
        r"entrails",
        r"tortur\w*",
        r"killing",
        r"massacre",
        r"wounds",
        r"injuries",
        r"crush\w*",
        r"maul\w*",
        r"eaten alive",
        r"burned alive",
        r"torn apart",
        r"corpses?",
        r"hanging",
        r"stabbing",
        r"murder\w*",
        r"execution",
        r"gouged",
        r"run over",
        r"decompos\w*",
    )
)
_PERSONAL = _any(
    (
        r"(?:home|house|flat|postal) address(?:es)?",
        r"(?:her|his|their) address(?:es)?",
        r"(?:everyone|members|people)(?:'s)? (?:\w+ ){0,4}(?:with )?their addresses",
        r"phone numbers?",
        r"mobile numbers?",
        r"cell(?:phone)? numbers?",
        r"whatsapp numbers?",
        r"\bnif\b",
        r"tax (?:number|id)",
        r"citizen card(?: number)?",
        r"id card(?: number)?",
        r"passport (?:number|details)",
        r"social security numbers?",
        r"\bssn\b",
        r"bank (?:details|account(?: details)?)",
        r"\biban\b",
        r"card (?:number|details)",
        r"passwords?",
        r"date of birth",
        r"birthdays? and addresses",
        r"medical (?:records|history)",
        r"ip address",
        r"licen[cs]e plate",
        r"car plate",
        r"(?:her|his|their) (?:daily )?(?:routine|schedule)",
        r"where (?:she|he|they|(?-i:[A-Z][a-z]+)) (?:lives?|works?|parks?|sleeps?)",
        r"(?:which|what) (?:flat|building|house|street|floor|school) (?:she|he|they|the "
        r"[a-z' ]{1,30}) (?:lives?|live|works?|goes?|go)",
        r"what time (?:she|he|they) (?:leaves?|gets? home|comes? home)",
    )
)
_GET = _any(
    (
        r"find",
        r"get",
        r"give",
        r"tell",
        r"look up",
        r"send",
        r"share",
        r"what'?s",
        r"what is",
        r"list",
        r"compile",
        r"reveal",
        r"leak",
        r"scrape",
        r"post",
        r"dig up",
        r"search for",
        r"track down",
    )
)
_ORGANISATION = _any(
    (
        r"pharmacy",
        r"council",
        r"office",
        r"shop",
        r"store",
        r"company",
        r"business",
        r"library",
        r"museum",
        r"oceanarium",
        r"restaurant",
        r"bakery",
        r"hospital",
        r"clinic",
        r"police",
        r"station",
        r"school",
        r"embassy",
        r"support",
        r"customer service",
        r"marketplace",
        r"\bapp\b",
        r"notary",
        r"helpline",
        r"hotline",
        r"charity",
        r"service",
        r"downing street",
    )
)
_PARTNER = _any(
    (
        r"(?:my |the |her |his )?(?:\w+'s )?(?:wife|husband|girlfriend|boyfriend|partner|ex|"
        r"room-?mate|flat-?mate|colleague|co-?worker|boss|neighbou?r)",
        r"(?:her|his|their)",
        r"someone(?:'s)?",
        r"a (?:person|girl|woman|guy|man)(?:'s)?",
        r"the (?:girl|guy|woman|man|seller|buyer)(?:'s)?",
        r"(?-i:[A-Z][a-z]+)'s",
    )
)

_REQUEST_RULES: tuple[tuple[str, str, re.Pattern[str]], ...] = tuple(
    (code, name, re.compile(pattern, _F))
    for code, name, pattern in (
        # S9: a CBRN agent with a verb of making, getting or using it, in either order
        (
            "S9",
            "cbrn",
            rf"\b{_CBRN_VERB}\b.{{0,60}}\b{_CBRN}\b|\b{_CBRN}\b.{{0,40}}\b{_CBRN_VERB_AFTER}\b",
        ),
        # S1: making explosives and untraceable weapons
        ("S1", "explosives", rf"\b{_MAKE}\b[^.?!]{{0,40}}\b{_EXPLOSIVE}\b"),
        (
            "S1",
            "explosives-recipe",
            rf"\b(?:recipe|instructions|ingredients|materials|steps|blueprints?|schematics?|"
            rf"tutorial|guide)\b[^.?!]{{0,30}}\b(?:for|to|of|on)\b[^.?!]{{0,25}}\b{_EXPLOSIVE}\b",
        ),
        # S1: harming a person, asked for with a cover-up
        ("S1", "harm-covered", rf"\b{_HARM}\w*\b.{{0,80}}{_COVER}"),
        (
            "S1",
            "harm-covered-2",
            rf"\b(?:hit|punch|slap|kick|beat|hurt)\w*\b.{{0,50}}{_COVER}",
        ),
        (
            "S1",
            "mass-attack",
            rf"\b(?:{_ASK}|plan(?:ning)?)\b[^.?!]{{0,40}}\b(?:shoot up|shooting at|attack(?: on)?|"
            rf"bomb|massacre|blow up|run (?:a )?(?:car|truck|van) into)\b[^.?!]{{0,25}}\b(?:school|"
            rf"mosque|church|synagogue|temple|festival|concert|crowd|stadium|mall|metro|station|"
            rf"parade|market|march|rally)\b",
        ),
        (
            "S1",
            "blow-up",
            rf"\b(?:{_ASK}|need)\b[^.?!]{{0,40}}\bblow up\b[^.?!]{{0,20}}\b(?:a |the |my |his |"
            rf"her |their )?(?:house|building|car|bridge|train|bus|plane|school|office|garage|"
            rf"shop|station|tower|mosque|church|synagogue|embassy|pipeline)\b",
        ),
        ("S1", "harm-how", rf"\b{_ASK}\b[^.?!]{{0,30}}\b{_HARM}\b (?:{_PERSON})\b"),
        # S9: mass harm
        (
            "S9",
            "gain-of-function",
            r"\b(?:make|modify|engineer|enhance|mutate|alter)\b.{0,20}\b(?:a |the )?(?:virus|flu|"
            r"influenza|pathogen|bacteri\w+|disease)\b.{0,30}\b(?:more (?:contagious|"
            r"transmissible|deadly|lethal|infectious)|spread faster|vaccine[- ]resistant)",
        ),
        (
            "S9",
            "mass-poison",
            r"\bpoison\w*\b.{0,40}\b(?:water supply|reservoir|city'?s water|town'?s water)\b|"
            r"\b(?:spray|release|disperse|spread)\b.{0,30}\b(?:toxic|poison\w*|chemicals?|gas|"
            r"toxins?|pathogens?|virus)\b.{0,30}\b(?:over|in|into|on|through) (?:a|the) "
            r"(?:crowd|stadium|metro|subway|city|school|concert|festival|station|building)",
        ),
        (
            "S9",
            "weaponise",
            rf"\b{_CBRN}\b.{{0,20}}\binto (?:a )?weapons?\b",
        ),
        # S3: sexual crimes, asked for (not a victim's or a helper's question)
        ("S3", "sex-crime", rf"\b{_ASK}\b[^.?!]{{0,40}}\b{_SEX_CRIME}"),
        ("S3", "sex-crime-cover", rf"\b{_SEX_CRIME}\w*\b.{{0,60}}{_COVER}"),
        (
            "S3",
            "incapacitate",
            r"\b(?:can'?t|cannot|won'?t|unable to) (?:say no|resist|refuse|remember)\b|"
            r"\b(?:too (?:drunk|high|out of it)|passes? out|barely conscious|unconscious)\b"
            r".{0,60}\b(?:sex|sleep with|have her|have him|go(?:es)? home with)\b|"
            r"\b(?:slip|put|spike|drug)\b.{0,40}\b(?:in|into)?\b.{0,20}\bdrinks?\b",
        ),
        (
            "S3",
            "coerce",
            r"\b(?:force|coerce|pressure|blackmail|trick|drug)\w*\b.{0,40}\b(?:into|to)\b.{0,25}"
            r"\b(?:sex|sleep(?:ing)? with|sex acts|having sex|sexual)\b|\bmake (?:my|her|the|a) "
            r"\w+ (?:sleep with|have sex with) me\b",
        ),
        (
            "S3",
            "inebriate",
            r"\b(?:get|make)\b.{0,20}\b(?:her|my date|a girl|a woman|the girl|the woman|"
            r"someone)\b.{0,15}\b(?:so |too |really |very )?(?:drunk|wasted|high|out of it)\b",
        ),
        (
            "S3",
            "depict-rape",
            r"\b(?:write|describe|narrate)\b.{0,50}\b(?:rape|raping|rapes|sexual assault)\b.{0,50}"
            r"\b(?:detail|hot|sexy|graphic|explicit|arousing)\b",
        ),
        (
            "S3",
            "voyeur",
            r"\b(?:secretly|hidden|hide (?:a|my)|spy) (?:cameras?|film|record|photograph|watch)"
            r"\w*\b.{0,60}\b(?:women|girls|her|changing rooms?|bathrooms?|toilets?|showers?|"
            r"neighbou?r|room-?mate|flat-?mate)\b|"
            r"\b(?:camera|film|record)\w*\b.{0,40}\b(?:changing rooms?|bathroom windows?|"
            r"up (?:her|their) skirts?)\b",
        ),
        (
            "S3",
            "intimate-images",
            r"\b(?:share|post|leak|spread|send|publish)\b.{0,40}\b(?:nudes|nude (?:photos|"
            r"pictures|pics)|intimate (?:photos|pictures|images|videos)|(?:her|his) (?:nudes|"
            r"naked (?:photos|pictures)))",
        ),
        (
            "S3",
            "prostitution",
            r"\b(?:find|buy|hire|pay for|book|get)\b.{0,20}\b(?:a )?(?:prostitutes?|hookers?|"
            r"escorts?)\b|\bescort (?:agency|business)\b|\bpimp\w*\b|\b(?:buy|pay for) sex\b",
        ),
        # S4: minors and sexual content together, or CSAM by name
        (
            "S4",
            "minor-sexual",
            rf"\b{_MINOR}\b.{{0,60}}\b{_SEXUAL}\b|\b{_SEXUAL}\b.{{0,60}}\b{_MINOR}\b",
        ),
        ("S4", "csam", r"\b(?:csam|child porn\w*|kiddie porn|cp links?|pedo (?:pics|material))\b"),
        ("S4", "grooming", rf"\bgroom\w*\b.{{0,30}}\b{_MINOR}\b"),
        (
            "S4",
            "approach-minor",
            rf"\b(?:get|convince|make|persuade|ask|pay|meet|befriend|get close to|be alone with|"
            rf"alone time with|message|chat with|find)\b (?:an? |the |some |lonely |young )*"
            rf"{_MINOR}\b.{{0,50}}\b(?:send|pictures|photos|pics|videos?|meet|alone|secret\w*|"
            rf"undress\w*|trust me|privately|without (?:their|the|his|her) parents|sell|changing|"
            rf"for (?:explicit|nude|sexy))",
        ),
        (
            "S4",
            "minor-images",
            rf"\b(?:pictures|photos|pics|film|record|videos?)\b.{{0,20}}\b{_MINOR}\b.{{0,20}}"
            rf"\b(?:changing|undress\w*|showering|in the shower|naked|bathing)\b",
        ),
        # S11: the member's own self-harm, asked about or disclosed
        ("S11", "self-harm", rf"\b{_SELF}"),
        ("X1", "tell-to-die", _TELL_DIE),
        # S13: false claims about the time, place or manner of voting
        (
            "S13",
            "voting-lies",
            r"\bvot(?:e|ing|es)\b.{0,30}\bby (?:text|sms|phone|e-?mail|whatsapp|an app)\b|"
            r"\bvote twice\b|\bvote (?:more than )?(?:two|2) times\b|"
            r"\belection(?:s)? (?:(?:is|are|was|has been|have been) )?(?:moved|postponed|"
            r"cancell?ed|delayed)\b|\b(?:vote|votes|ballots?)\b (?:won'?t|doesn'?t|will not|does "
            r"not|no longer) count\b|\bpolling (?:stations?|places?) (?:are|is|will be) "
            r"(?:closed|moved)\b",
        ),
        # S12: explicit sexual writing asked for
        (
            "S12",
            "explicit",
            r"\b(?:write|describe|tell|send|give|roleplay|role-play|narrate|generate|create|"
            r"make)\b.{0,60}\b(?:sexually explicit|explicit sex|sex scenes?|sex story|"
            r"erotic(?:a)? (?:story|stories|fan ?fiction|fantasy|scene|message)|porn\w*|nsfw|"
            r"x-rated|smut\w*|dirty (?:story|message|talk|text)|lewd|graphic sex|"
            r"explicit (?:story|scene|message|fantasy|details))\b",
        ),
        (
            "S12",
            "explicit-3",
            r"\b(?:describe|roleplay|role-play|narrate)\b.{0,50}\b(?:having sex|sex with me|in bed "
            r"with me|(?:your|my|her|his) naked body|oral sex|masturbat\w*|threesome|orgasm\w*)\b",
        ),
        (
            "S12",
            "explicit-2",
            r"\b(?:sex|having sex|naked body|oral sex|threesome|masturbat\w*)\b.{0,60}"
            r"\b(?:explicit|graphic|in (?:full |great |vivid )?detail|as graphic as)\b|"
            r"\b(?:explicit|graphic)\b"
            r".{0,40}\b(?:sex|having sex|naked|oral sex|threesome|masturbat\w*)\b",
        ),
        # X4: gore described for its own sake
        (
            "X4",
            "gore",
            rf"^(?=.*\b{_GORE}).*(?:\b(?:describe|write|tell|narrate|show|depict|give me)\b"
            rf".{{0,100}}\b(?:gory|gruesome|graphic|vivid|bloody|in (?:\w+ ){{0,3}}detail|"
            rf"every (?:bloody |gory )?detail|frame by frame|with all the (?:blood|gore))\b|"
            rf"\b(?:a|an) (?:very |really )?(?:bloody|gory|gruesome|graphic) (?:description|"
            rf"story|scene|account)|\bgore (?:story|scene|description)|\bmost (?:gory|"
            rf"gruesome|graphic)\b|\bgoriest\b)",
        ),
        (
            "X4",
            "gore-image",
            r"\b(?:decapitated|beheaded|dismembered|disembowell?ed|mutilated|flayed|skinned)\b"
            r".{0,30}\b(?:man|woman|person|people|body|bodies|corpse|head|child|victim|dog|cat|"
            r"animal)\b|\b(?:gory|gruesome|bloody|photorealistic|realistic)\b.{0,30}\b(?:"
            r"corpse|decapitat\w*|dismember\w*|mutilat\w*|disembowel\w*|guts|entrails)",
        ),
        # S7: personal data about someone else, tracking and reading their messages
        (
            "S7",
            "personal-data",
            rf"\b{_GET}\b[^.?!]{{0,60}}\b{_PERSONAL}\b",
        ),
        (
            "S7",
            "tracking",
            r"\b(?:track|trace|follow|spy on|monitor|stalk|locate|put a (?:gps )?tracker on|"
            r"install (?:a )?(?:hidden )?(?:tracker|spyware|app))\b[^.?!]{0,40}\b(?:my (?:wife|"
            r"husband|girlfriend|boyfriend|partner|ex|neighbou?r|colleague|co-?worker|room-?mate|"
            r"flat-?mate|daughter'?s boyfriend|son'?s girlfriend)|her|him|them|someone|a person|"
            r"the (?:girl|guy|woman|man))\b",
        ),
        (
            "S7",
            "their-messages",
            rf"\b(?:read|see|access|get into|hack(?: into)?|open|check|listen to|intercept)\b"
            rf"[^.?!]{{0,30}}\b{_PARTNER}(?:'s)? ?(?:whatsapp|messages|texts|emails?|"
            rf"phone(?: calls)?|instagram|facebook|accounts?|dms|laptop|chats?|"
            rf"location(?: history)?|private "
            rf"messages)\b",
        ),
        ("S7", "dox", r"\bdox(?:x)?(?:ing|ed)?\b"),
        (
            "S7",
            "whereabouts",
            r"\bwhere (?:does|do) (?:the|that|this) (?:woman|girl|guy|man|lady|boy|kid|teen|"
            r"member|seller|buyer)\b[^?]{0,40}\blive\b|\bwho (?:my|her|his) \w+ is (?:texting|"
            r"messaging|talking to|seeing)\b",
        ),
        (
            "S7",
            "unmask",
            r"\b(?:real|true) (?:name|identity)\b.{0,40}\b(?:behind|of) (?:the|this|that|an?) "
            r"(?:anonymous|account|user(?:name)?|profile|person|commenter)|\bwho is behind (?:the|"
            r"this|that) (?:anonymous )?(?:account|user(?:name)?|profile)",
        ),
    )
)

# A rule is not applied where the text gives it a context of its own: (code, rule) -> pattern.
_UNLESS: dict[tuple[str, str], re.Pattern[str]] = {
    ("S1", "harm-how"): re.compile(rf"\b{_PLAY}\b", _F),
    ("S1", "harm-covered"): re.compile(rf"\b{_PLAY}\b", _F),
    ("S3", "sex-crime"): re.compile(rf"\b{_PROTECT}", _F),
    ("S3", "incapacitate"): re.compile(rf"\b{_PROTECT}", _F),
    ("S4", "minor-sexual"): re.compile(rf"\b{_PROTECT}", _F),
    ("S4", "grooming"): re.compile(rf"\b{_PROTECT}", _F),
    ("S7", "personal-data"): re.compile(
        rf"\b{_PERSONAL}\b[^.?!]{{0,25}}\b{_ORGANISATION}|\b{_ORGANISATION}\w*(?:'s)? "
        rf"(?:\w+ )?{_PERSONAL}|\bmy (?:own )?{_PERSONAL}|\bmy (?:own )?data\b|"
        rf"\b(?:protect|hide|change|update|stop|report|delete|remove|secure|strong|reset|"
        rf"forgot|recover)\w*\b[^.?!]{{0,40}}\b{_PERSONAL}|\b{_PERSONAL}\b[^.?!]{{0,40}}\b"
        rf"(?:safe|secure|private|visible|public)\b",
        _F,
    ),
    ("X4", "gore"): re.compile(
        r"\b(?:not|no|nothing|without|never|isn'?t|too)\b.{0,12}\b(?:gory|gruesome|graphic|"
        r"bloody|scary)\b",
        _F,
    ),
    ("S7", "dox"): re.compile(r"\b(?:what is|what does|report|protect|prevent|stop)\b", _F),
}


def request_codes(text: str) -> dict[str, list[str]]:
    """``{code: [rule names]}`` for the rules a member's request matches."""
    found: dict[str, list[str]] = {}
    for code, name, pattern in _REQUEST_RULES:
        if not pattern.search(text):
            continue
        unless = _UNLESS.get((code, name))
        if unless is not None and unless.search(text):
            continue
        found.setdefault(code, []).append(name)
    return found


# --- follow-ups that carry no request of their own ---------------------------------------
# Conversational filler: pronouns, articles, prepositions and the verbs of asking for more.
# A text made only of these ("Tell me more", "go on", "and then?", "more like this please")
# holds nothing to judge on its own; a sentence classifier still places it somewhere, and
# once placed "Tell me more" among requests for someone's private life (S7 0.85). Words that
# can carry a hazard (over, done, end, take, hurt...) are deliberately not here.
_FILLER_WORDS = """
    a an the and or but so then also too just again else more less any some other another
    this that these those it its them they he she him her his hers we us our you your i me my
    mine what which who whom whose why how when where there here about of on in at to for from
    with by up out into onto tell say said show give explain elaborate continue go keep let
    lets let's can could would will should may might do does did is are was were be been am
    please pls thanks thank thx yes yeah yep no nope ok okay sure cool great nice right well
    like same next one ones thing things stuff bit little lot lots much many very really
    actually maybe now later still all both each either every something anything everything
    hmm huh oh wow"""
_FILLER = frozenset(_FILLER_WORDS.split())
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def contentless(text: str) -> bool:
    """Whether ``text`` is only conversational filler ("Tell me more", "and then?"): no word
    that could carry a request of its own. Moderation judges such a turn by the rules and
    together with the turn before it, not by the classifier's reading of it alone."""
    words = _WORD.findall(text.lower())
    return bool(words) and len(words) <= 12 and all(w in _FILLER for w in words)


# --- X3: prompt attacks (the shapes a classifier over sentence meaning misses) --------------
_ATTACK_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern, _F))
    for name, pattern in (
        (
            "override",
            r"\b(ignore|disregard|forget|override|bypass)\b.{0,40}\b(previous|prior|above|"
            r"preceding|following|earlier|all|any|your|the)\b.{0,40}\b(instructions?|"
            r"prompts?|rules|directions|guidelines|info(rmation)?|context|messages?|filters?|"
            r"question)\b",
        ),
        ("stop-and-print", r"\b(stop everything|nevermind)\b.{0,80}\b(print|say|output)\b"),
        ("role-switch", r"\b(system|developer)\s*:\s*(focus|ignore|you are|from now on|new)"),
        ("session-break", r"<\s*end of (session|conversation)\s*>"),
        (
            "persona",
            r"\b(DAN|do anything now|developer mode|jailbr(oken|eak)|no (ethical|moral) "
            r"(guidelines|restrictions)|unfiltered and amoral|without any (restrictions|filters)|"
            r"with no (rules|restrictions|filters))\b",
        ),
        (
            "decode-and-obey",
            r"\b(decode|decipher|translate)\b.{0,60}\b(base64|base32|base16|hex|rot-?13|morse|"
            r"braille|atbash|ascii85|uuencode|quoted-printable|mime|base2048|encoded)\b",
        ),
        ("encoded-blob", r"(?:[A-Za-z0-9+/]{4}){12,}(?:==?)?"),
        ("exfiltration", r"!\[[^\]]*\]\(\s*https?://[^)\s]*[?&][^)\s]*=[^)\s]*\)"),
        ("repeat-verbatim", r"\b(print|say|repeat|output)\b.{0,30}\bverbatim\b"),
        ("reveal-prompt", r"\b(reveal|print|show|repeat|output)\b.{0,30}\bsystem prompt\b"),
    )
)
# in replies: markup that would make a client fetch an attacker's URL (data exfiltration)
_OUTPUT_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("markdown-image", re.compile(r"!\[[^\]]*\]\(\s*https?://", re.IGNORECASE)),
    ("html-resource", re.compile(r"<\s*(img|script|iframe)\b[^>]*\bsrc\s*=", re.IGNORECASE)),
)


def attack_rules(text: str, *, role: str = "user") -> list[str]:
    """The names of the prompt-attack rules ``text`` matches (replies: exfiltration markup)."""
    rules = _ATTACK_RULES if role == "user" else _OUTPUT_RULES
    return [name for name, pattern in rules if pattern.search(text)]


def reply_markup(text: str) -> list[str]:
    """Markup in a reply that would make a client fetch an attacker's URL."""
    return attack_rules(text, role="assistant")


# --- third-party content ---------------------------------------------------------------------
_ADDRESSED = re.compile(
    r"\b(?:assistant|a\.?i\.?|bot|chatbot|language model|llm|summari[sz]er|model|gpt)s?\b"
    r"(?:\s+readers?)?\s*[:,-]|"
    r"\b(?:note|instructions?|message|attention|important(?: update)?)\b[^.:\n]{0,20}"
    r"\b(?:for|to) (?:the )?(?:assistant|a\.?i\.?|bot|summari[sz]er|language model|llm|"
    r"model|ai readers?)\b|"
    r"\b(?:to|for) the (?:assistant|bot|a\.?i\.?)\b|"
    r"\b(?:when (?:you|anyone) (?:summari[sz]e|asks?|reads?))\b|"
    r"\b(?:in (?:the|every|your) (?:summary|summaries|catch-?up|answers?))\b|"
    r"\b(?:from now on|new (?:instruction|rule)s?)\b|"
    r"\b(?:assistant|bot|a\.?i\.?)\b[^.\n]{0,30}\b(?:must|should|make sure|tell|say|add|"
    r"append|repeat|recommend|reply|answer|output|print)\b|"
    r"<\s*/?\s*system\s*>|\[\s*/?\s*system\s*\]|<!--",
    _F,
)


def instructions_in(text: str) -> list[str]:
    """Why ``text`` (a post, a listing, a group message) reads as orders to the assistant:
    prompt-attack shapes, or a sentence addressed to an assistant or summariser. Empty: it reads
    as content."""
    found = attack_rules(text)
    if _ADDRESSED.search(text):
        found.append("addressed-to-assistant")
    return found


_PHONE = r"(?<!\w)(?:\+\d{1,3}[\s.-]?)?(?:\d[\s.-]?){8,12}\d(?!\w)"
_IBAN = r"\b[A-Z]{2}\d{2}(?:[\s]?[A-Z0-9]{4}){3,7}(?:[\s]?[A-Z0-9]{1,3})?\b"
_LINK = r"\b(?:https?://\S+|www\.\S+|[a-z0-9-]+\.(?:com|net|org|io|me|example|link|xyz|info|pt|"
_LINK += r"ly)/\S*|bit\.ly/\S+|t\.me/\S+|[a-z0-9-]+(?:-[a-z0-9]+)+\.(?:com|net|org|example|pt))"
_PAYMENT = (
    r"\b(?:mb ?way|western union|moneygram|bank transfer|transfer|wire|pay(?:ment)?|send|"
    r"deposit|fee|gift cards?|bitcoin|crypto|paypal|revolut|bizum|iban)\b"
)
_CONTACT_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("phone", re.compile(_PHONE)),
    ("iban", re.compile(_IBAN)),
    ("link", re.compile(_LINK, re.IGNORECASE)),
    ("payment", re.compile(_PAYMENT, re.IGNORECASE)),
)


@cache
def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def contact_details(text: str) -> dict[str, list[str]]:
    """Phone numbers, IBANs, links and payment words in ``text``: ``{kind: [matches]}``."""
    found: dict[str, list[str]] = {}
    for kind, pattern in _CONTACT_PATTERNS:
        hits = [m.group(0) for m in pattern.finditer(text)]
        if kind == "phone":  # years, prices and ids are not phone numbers: 9+ digits
            hits = [h for h in hits if len(_digits(h)) >= 9]
        if hits:
            found[kind] = hits
    return found


def unrequested_contacts(answer: str, request: str) -> list[str]:
    """Phone numbers, IBANs and links in ``answer`` that ``request`` does not hold, and payment
    instructions when the answer carries one of those: what a third party's content could have
    slipped into an answer. Empty when there are none."""
    said, asked = contact_details(answer), contact_details(request)
    asked_digits = {_digits(x) for x in asked.get("phone", []) + asked.get("iban", [])}
    asked_links = {x.lower().rstrip(".,)") for x in asked.get("link", [])}
    found = [
        f"{kind}:{x}"
        for kind in ("phone", "iban")
        for x in said.get(kind, [])
        if _digits(x) not in asked_digits
    ]
    found += [
        f"link:{x}" for x in said.get("link", []) if x.lower().rstrip(".,)") not in asked_links
    ]
    if found and "payment" in said:
        found.append("payment-instruction")
    return found
