"""Word lists and sentence templates of the procedurally generated narratives (our own wording).

Sizes follow the paper's generator: 64 locations x 49 characters (3136 unique pairs), 20 events, items named
"<adjective> <material> <type>" from 18 x 15 x 21 = 5670 combinations, and template pools of 10 (scene,
reason, event, character, farewell, conclusion, extra), 30 (conversation), 9 (purchase) and 5 (sale).

Placeholders: {P} protagonist, {location}, {character}, {event}, {a_item} (item with its indefinite article),
{item}, {sold} (an item bought in an earlier chapter). Templates other than the purchase and sale ones never
mention items, buying or selling, so that deleting a purchase sentence (story_filtering) leaves a chapter with
no acquisition at all.
"""

PROTAGONIST = "Marek"

LOCATIONS = (
    "the salt marsh", "the old lighthouse", "the clockmaker's workshop", "the river ferry",
    "the mountain monastery", "the night market", "the abandoned mill", "the royal library",
    "the fishing village", "the glass foundry", "the desert caravanserai", "the harbor tavern",
    "the hilltop observatory", "the sunken garden", "the copper mine", "the border fortress",
    "the silk bazaar", "the winter palace", "the pilgrims' hostel", "the floating docks",
    "the cedar forest camp", "the stone quarry", "the weavers' guild hall", "the apothecary",
    "the ruined chapel", "the orchard estate", "the cliffside inn", "the bell foundry",
    "the lantern festival grounds", "the printing house", "the salt flats", "the public bathhouse",
    "the shipyard", "the spice warehouse", "the hunting lodge", "the cartographers' office",
    "the amphitheater", "the tea plantation", "the frozen harbor", "the vineyard cellar",
    "the tannery", "the cathedral square", "the falconers' tower", "the reed village",
    "the horse fair", "the hermit's cave", "the marble quarry", "the toll bridge",
    "the watchtower", "the goldsmiths' street", "the pottery kiln", "the snowy pass",
    "the canal locks", "the bookbinders' lane", "the covered market hall", "the windmill",
    "the dye works", "the beekeepers' meadow", "the customs house", "the lakeside pavilion",
    "the wrestling school", "the herb garden", "the ropewalk", "the university courtyard",
)

CHARACTERS = (
    "Ilse Varga", "Tomas Brenner", "Odile Fenwick", "Bram Hollis", "Sunniva Kask", "Rafael Duarte",
    "Greta Lindqvist", "Jonas Pell", "Amara Okafor", "Cyril Vantongeren", "Hedda Moor", "Piet Ruysdael",
    "Lucia Ferro", "Anselm Graves", "Nadia Petrov", "Elio Marchetti", "Wren Caldwell", "Tobias Quint",
    "Mirela Dobos", "Ansgar Holm", "Beatrix Lowe", "Casimir Zielinski", "Dagny Roth", "Emeric Toth",
    "Freya Aldous", "Gideon Marsh", "Halina Nowak", "Isidor Bloom", "Jorunn Eide", "Kasper Vidal",
    "Leontine Baptiste", "Matthias Kern", "Noor Haddad", "Orsolya Fekete", "Paulin Renard",
    "Quentin Ashby", "Rosalind Thorne", "Severin Gallo", "Thea Wolcott", "Ulrich Stamm", "Vesna Kovac",
    "Wilhelmina Crane", "Xavier Monteiro", "Yara Castell", "Zeno Albrecht", "Agnes Tulloch",
    "Benedikt Sauer", "Clementine Rowe", "Dmitri Volkov",
)

EVENTS = (
    "a harvest festival", "a sudden thunderstorm", "a wedding procession", "a horse race",
    "an eclipse of the sun", "a lantern parade", "a village election", "a travelling puppet show",
    "a flood warning", "a chess tournament", "the funeral of a beloved baker", "a spring fair",
    "the arrival of a merchant fleet", "a solemn feast day", "a fire in the granary", "a poetry contest",
    "a visit from the governor", "the first snowfall of the year", "a wrestling match", "a meteor shower",
)

ITEM_ADJECTIVES = (
    "polished", "ancient", "tiny", "ornate", "battered", "gleaming", "delicate", "heavy", "painted",
    "engraved", "weathered", "elegant", "sturdy", "miniature", "rustic", "peculiar", "faded", "crooked",
)
ITEM_MATERIALS = (
    "copper", "silver", "oak", "glass", "bronze", "iron", "leather", "porcelain", "brass", "walnut",
    "jade", "pewter", "clay", "marble", "tin",
)
ITEM_TYPES = (
    "lantern", "compass", "music box", "hourglass", "teapot", "dagger", "mirror", "flute", "chess set",
    "inkwell", "candlestick", "spyglass", "bracelet", "goblet", "figurine", "key", "bell", "lockbox",
    "comb", "sundial", "pendant",
)

SCENE = (
    "{P} reached {location} just as the morning fog began to lift.",
    "After a long day on the road, {P} arrived at {location}.",
    "The next stop on {P}'s journey was {location}.",
    "{P} walked into {location} a little before noon.",
    "By the time the bells rang for evening, {P} had come to {location}.",
    "A narrow path led {P} to {location}.",
    "{P} spent the early hours of the day travelling to {location}.",
    "It was raining lightly when {P} entered {location}.",
    "Following the directions of a shepherd, {P} found the way to {location}.",
    "The road finally brought {P} to {location}.",
)

REASON = (
    "{P} had heard that travellers often stopped there to rest.",
    "An old map had marked the place with a small star.",
    "A letter from a friend had recommended the visit.",
    "{P} hoped to hear news of the roads further north.",
    "The place was said to be worth seeing at least once.",
    "{P} needed a quiet place to think for a while.",
    "Curiosity, more than anything else, had drawn {P} there.",
    "A stranger at the last inn had spoken warmly of it.",
    "{P} wanted to rest tired feet before going on.",
    "Heavy rain had made the usual road impassable.",
)

EVENT = (
    "The whole place was busy with {event}.",
    "Everyone there was talking about {event}.",
    "{P} arrived in the middle of {event}.",
    "Nobody could think of anything but {event}.",
    "Word of {event} had spread through the crowd.",
    "The day was marked by {event}.",
    "Children ran about excitedly because of {event}.",
    "{P} watched {event} for a while from a distance.",
    "The locals were still recovering from {event}.",
    "It seemed that {event} had drawn people from far away.",
)

CHARACTER = (
    "There {P} met {character}, who greeted the traveller with a nod.",
    "{character} was the first person to speak to {P}.",
    "Soon {P} struck up a conversation with {character}.",
    "{P} was introduced to {character} by a helpful stranger.",
    "Sitting by the entrance was {character}, who waved {P} over.",
    "{P} met {character} near the well and said hello.",
    "{character} offered {P} a seat and a cup of something warm.",
    "It did not take long before {P} met {character}.",
    "{P} found {character} working quietly in a corner.",
    "A friendly voice called out, and {P} turned to meet {character}.",
)

CONVERSATION = (
    "{character} talked at length about the price of bread.",
    "They argued cheerfully about the best road to the coast.",
    "{character} described a strange dream from the night before.",
    "The two of them laughed about a clumsy mule they had both seen.",
    "{character} asked many questions about {P}'s home town.",
    "They agreed that the summer had been unusually dry.",
    "{character} shared a rumour about a hidden spring in the hills.",
    "{P} listened to a long story about {character}'s grandfather.",
    "They compared the songs sung in different valleys.",
    "{character} complained about the noise of the geese next door.",
    "The conversation drifted to the stars and their names.",
    "{character} explained how to tell the time by the shadows.",
    "They spoke quietly about an old quarrel between two families.",
    "{character} recited a short poem about the sea.",
    "{P} described the mountains seen a few days earlier.",
    "They discussed whether it would rain again before nightfall.",
    "{character} told a joke that {P} did not quite understand.",
    "The talk turned to recipes for a good winter soup.",
    "{character} wondered aloud what lay beyond the eastern hills.",
    "They shared memories of the coldest winter either could remember.",
    "{character} admitted to being afraid of deep water.",
    "{P} asked about the history of the place.",
    "They disagreed politely about the best way to brew tea.",
    "{character} pointed out a pair of swallows nesting under the roof.",
    "The two talked about a famous race held every spring.",
    "{character} hummed an old tune while they talked.",
    "They spoke about a bridge that had collapsed many years ago.",
    "{character} gave {P} advice about sore feet and long walks.",
    "The conversation turned to a strange light seen over the fields.",
    "They laughed about how quickly the years go by.",
)

PURCHASE = (
    "Before leaving, {P} bought {a_item} from {character}.",
    "{P} acquired {a_item} from {character} for a fair price.",
    "{character} sold {P} {a_item} after a short haggle.",
    "{P} paid a handful of coins to {character} for {a_item}.",
    "After some thought, {P} purchased {a_item} from {character}.",
    "{P} left with {a_item}, bought from {character} that afternoon.",
    "{character} agreed to part with {a_item}, and {P} paid for it gladly.",
    "{P} traded a few coins for {a_item} that {character} was selling.",
    "In the end, {P} bought {a_item} that {character} had on display.",
)

SALE = (
    "{P} also sold the {sold} to {character}.",
    "Before going, {P} sold the {sold}, which {character} had admired.",
    "{character} bought the {sold} from {P}.",
    "{P} parted with the {sold}, selling it to {character}.",
    "{P} handed the {sold} over to {character} in exchange for coins.",
)

FAREWELL = (
    "{P} said goodbye to {character} and promised to write.",
    "{character} waved until {P} was out of sight.",
    "They parted as friends.",
    "{P} thanked {character} for the company.",
    "{character} wished {P} a safe journey.",
    "With a last handshake, {P} took leave of {character}.",
    "{character} walked with {P} as far as the gate.",
    "{P} left {character} with a few warm words of thanks.",
    "They agreed to meet again one day.",
    "{character} gave {P} directions for the road ahead.",
)

CONCLUSION = (
    "As evening fell, {P} left {location} behind.",
    "{P} slept well that night.",
    "The road ahead looked long, but {P} felt ready for it.",
    "{P} set off again at dawn the next day.",
    "It had been a good day, {P} decided.",
    "Later, {P} wrote a few lines about the day in a small notebook.",
    "{P} left {location} in good spirits.",
    "Tired but content, {P} went on.",
    "That night {P} dreamed of distant cities.",
    "By sunset {P} was already on the road again.",
)

EXTRA = (
    "The air smelled of woodsmoke and rain.",
    "A dog barked somewhere in the distance.",
    "Clouds moved slowly across the sky.",
    "A cart rattled past, loaded with turnips.",
    "The wind carried the sound of distant voices.",
    "Somewhere nearby, someone was playing a fiddle.",
    "For a while the light was soft and warm.",
    "A cat watched everything from a windowsill.",
    "The ground was still wet from the night before.",
    "A flock of crows rose noisily from a field.",
)
