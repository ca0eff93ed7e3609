"""The reading curriculum: an unbounded, deterministic synthetic source of words, lines and short text blocks
rendered in many fonts, with held-out words and held-out fonts for measuring generalisation.

| name                  | words                  | fonts                 | use                               |
|-----------------------|------------------------|-----------------------|-----------------------------------|
| reading               | TRAIN_WORDS (~90%)     | train fonts           | training stream (any n)           |
| reading_unseen_words  | HELD_OUT_WORDS (~10%)  | train fonts           | eval: can it read words it never saw? |
| reading_unseen_fonts  | TRAIN_WORDS            | held-out fonts        | eval: can it read a typeface it never saw? |
| reading_nonce         | random letter strings  | train fonts           | training stream: text only the image can predict |
| reading_nonce_words   | random letter strings  | train fonts           | the first stage: word level only (1-3, 32-64 px) |
| reading_fine          | random letter strings  | train fonts           | a big word on a bigger page (Gundam vs Base) |
| reading_fine_unseen_words | HELD_OUT_WORDS     | train fonts           | eval: the same with words it never saw |
| reading_spot_nonce    | random letter strings  | train fonts           | a big word anywhere, at Base's scale |
| reading_spot_unseen_words | HELD_OUT_WORDS     | train fonts           | eval: the same with words it never saw |
| reading_crop, reading_crop_unseen_words, reading_crop_unseen_fonts, reading_crop_nonce, reading_crop_nonce_words |
|                       | as the uncropped split | as the uncropped split | the same samples as text-line crops |
| reading_big, reading_big_unseen_words, reading_big_unseen_fonts, reading_big_nonce |
|                       | as the split named     | as the split named    | one big word, cropped: ~1 letter/token |
| reading_cells, reading_cells_unseen_words, reading_cells_unseen_fonts, reading_cells_nonce |
|                       | as the split named     | as the split named    | one word, a letter per 64 px cell |
| reading_small, reading_small_unseen_words, reading_small_unseen_fonts, reading_small_nonce |
|                       | as the split named     | as the split named    | one word in small print, cut as a real one |

Each generator is `gen(n, seed=0) -> Iterator[record]` (the nanoocr.data.synthetic signature; registered in
its GENERATORS, so `synthetic:reading:100000` is a conversion SPEC). Sample i depends only on (name, seed, i):
its randomness is `random.Random(f"{name}:{seed}:{i}")`, so n can be any size (nothing is precomputed, a
stream of 10**9 samples starts at once) and sample i is the same whatever n is.

A sample (`sample(name, seed, i)` gives one with its rendering parameters):
- level (from the index's random stream): 40% "word" (1-3 words, 32-64 px), 40% "line" (4-10 tokens as fit,
  24-40 px), 20% "block" (2-5 lines of 3-8 tokens as fit, 22-32 px). Sizes are the em in pixels on a canvas
  512-640 px wide, so the tiny (512) and small (640) views shrink text by at most 0.8x;
- tokens: words of the split's list, ~10% Capitalized, ~3% UPPER CASE, ~5% numbers, occasional commas and a
  full stop at a line's end; the answer is the rendered text exactly, lines joined by "\\n";
- canvas: grey background and ink of random levels at least 90 grey levels apart (10% light on dark), text
  at a random position; then, each with probability 0.3, a Gaussian blur (radius 0.3-1.0), Gaussian noise
  (sigma 2-10) and a JPEG round trip (quality 30-90); stored as a greyscale PNG (no timestamps:
  same parameters, same bytes);
- id `"{name}-s{seed}-{i:06d}-{level}-{font file stem}"`, source `"synthetic:{name}"`: the id says which
  level and font made the image.

Text-line crops (`reading_crop*`): sample i of the uncropped split (same text, font, size, contrast and
degradations), cut to the ink's box plus 2-12 px left/right and 1-8 px above/below (drawn per side), widened
on the right with background to at least 384 px. That is what a line image cut from a page looks like
(nanoocr.eval.lines), and it fixes where the text starts in the view: the pad-to-square of the tiny/small
views centres the strip vertically, so the first character is at the left edge of the middle token rows. On a
canvas the text starts anywhere, and a fresh GPT must first learn to find it: with perfect vision tokens it
reads text that always starts in the same place within ~500 steps and text placed at random not in 800
(BENCHMARKS.md "Can the GPT read at all?").

Big words (`reading_big*`, BIG): one token of the named split's words and fonts at an em of 80-120 px, cropped
as above: proportional text at about one letter per vision token of the tiny view (a token covers 64 px; a
lowercase letter's advance is about half an em), where letter j's token column depends on the widths of the letters
before it. A model from scratch did not read it in 1100 steps (BENCHMARKS.md "Can the GPT read at all?"); it is the
stage after the cells below.

Small print (`reading_small*`, SMALL): one token of the named split's words and fonts at an em of 14-28 px (7-13 pt
at 150 dpi, the render nanoocr.eval.lines cuts real words from), cut to the word's box as pdftotext gives one (its
advance by the font's line height) plus a few pixels (_word_box_crop), not widened: the tiny view scales the crop
up 4-10x, so the letters reach about the big words' size in tokens but with the blur of a few pixels blown up,
which is what a real word crop looks like to the model.

Letters in cells (`reading_cells*`, CELLS; cells_sample): one token of the named split's words and fonts, each
letter centred in its own CELL = 64 px cell (a typewriter's fixed pitch, in any font) at an em of 64-88 px, on a
512 px wide strip cut to the font's line box: in the tiny view (scale 1) letter j lies in token column j of the
same token rows in every image. That is text at one letter per vision token where the GPT can read letter j at a
fixed offset from its own position (with perfect tokens a fresh GPT learns that within ~500 steps), so the
encoder's glyphs are what is left to learn. Proportional text at one letter per token (`reading_big*`), where
letter j's column depends on the letters before it, is the harder next stage.

Nonce words (`reading_nonce`): every token is a random string of 1-9 letters drawn uniformly from a-z (then
cased as above; numbers as above), never one of WORDS. `reading_nonce_words` draws only the word level
(1-3 nonce words, 32-64 px): the words -> lines -> blocks curriculum's first stage, mixed in by proportion.
A language model of such text learns nothing but the letter set, so the only way to lower the loss on it is to
read the image: the signal that reaches the encoder is "tell these images apart", where real words first teach
the GPT to spell the train words from text alone and tell the encoder "be the average image" (BENCHMARKS.md
"It reads?": at encoder lr 1e-4 nonce text delays the collapse, it does not prevent it).

Splits (fixed, no randomness):
- words: WORDS is a fixed embedded list of 2400 common English words (wordfreq's English frequency list,
  kept if all-lowercase ASCII and in Debian's wamerican dictionary, names, slurs and charged words removed).
  A word is held out iff blake2b(word) % 10 == 0 (~10%): a held-out word never appears in a `reading` or
  `reading_unseen_fonts` sample, in any casing;
- fonts: every file of FONT_FILES that is installed (sorted), FreeSerif (regular, bold, italic) and DejaVu
  Serif Condensed held out (HELD_OUT_FONTS, the ones installed). The set in use therefore depends on the
  installed Debian font packages (fonts-dejavu-core, fonts-liberation, fonts-freefont-ttf; fonts-noto-core
  if present): the same packages give the same data. Fewer than 3 installed fonts, or none held out, is an
  error naming the packages to install.
"""
from __future__ import annotations

import hashlib
import io
import math
import random
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from nanoocr.data.records import OCR_PROMPT, qa

FONT_ROOT = Path("/usr/share/fonts/truetype")
# Regular / bold / italic of each family; condensed, light and math faces left out (odd shapes for a start).
FONT_FILES = (
    "dejavu/DejaVuSans.ttf", "dejavu/DejaVuSans-Bold.ttf", "dejavu/DejaVuSans-Oblique.ttf",
    "dejavu/DejaVuSerif.ttf", "dejavu/DejaVuSerif-Bold.ttf", "dejavu/DejaVuSerif-Italic.ttf",
    "dejavu/DejaVuSansMono.ttf", "dejavu/DejaVuSansMono-Bold.ttf", "dejavu/DejaVuSerifCondensed.ttf",
    "liberation/LiberationSans-Regular.ttf", "liberation/LiberationSans-Bold.ttf",
    "liberation/LiberationSans-Italic.ttf", "liberation/LiberationSerif-Regular.ttf",
    "liberation/LiberationSerif-Bold.ttf", "liberation/LiberationSerif-Italic.ttf",
    "liberation/LiberationMono-Regular.ttf", "liberation/LiberationMono-Bold.ttf",
    "liberation/LiberationSansNarrow-Regular.ttf",
    "freefont/FreeSans.ttf", "freefont/FreeSansBold.ttf", "freefont/FreeSansOblique.ttf",
    "freefont/FreeSerif.ttf", "freefont/FreeSerifBold.ttf", "freefont/FreeSerifItalic.ttf",
    "freefont/FreeMono.ttf", "freefont/FreeMonoBold.ttf",
    "noto/NotoSans-Regular.ttf", "noto/NotoSerif-Regular.ttf", "noto/NotoSansMono-Regular.ttf",
)
# A whole typeface (all its weights) is held out, so no sibling of an unseen font is in training either.
HELD_OUT_FONTS = frozenset({"freefont/FreeSerif.ttf", "freefont/FreeSerifBold.ttf", "freefont/FreeSerifItalic.ttf",
                            "dejavu/DejaVuSerifCondensed.ttf"})
FONT_PACKAGES = "fonts-dejavu-core fonts-liberation fonts-freefont-ttf"
HELD_OUT_EVERY = 10  # one word in ten (by hash) is held out
LEVELS = (("word", 0.4), ("line", 0.4), ("block", 0.2))

# 2400 common English words, most frequent first (see the module docstring for where they come from).
WORDS = tuple("""
the to and of in is for that you it on with this was be as are have at he not by but from my or we an your all
so his they me if one can will just like about up out what has when more do no were who had their there her
which time get been would she new people how some also them now other its our than good only after first him
into know see two make over think any then could back these us want because go well said way most much very
where even should may here need really did right work year years being day too going before off why made still
take got many never those life say world down great through last while best such love man home long look
something use same used both every come part state three around between always better find help high little
old since another does own things under during game thing give house place school again next each without
against end found must show big feel sure team ever family keep might please put money free second someone
away left number city days lot name night play until company doing few let real called different having set
thought done however getting government group looking public top women business care start system times week
already anything case nothing person today change enough everything full live making point read told yet bad
four hard mean once support tell including music power seen states stop water based believe call head men
national small took white came far job side though try went yes actually later less line order party run says
service country open season thank children everyone general trying united using area black following law makes
together whole car face five kind maybe per story working course games health hope important least means news
within able book early friends information local post thanks video young ago others social talk court fact
given half hand level mind often single become body coming control food guy hours office pay problem south
true almost history known large lost research room several started taking university win wrong along anyone
else girl matter pretty remember air bit friend hit needs nice playing probably saying understand class close
comes idea looks past possible wanted cause due happy human members months move question series wait woman ask
community data late leave north saw special watch either future light low million morning police short stay
taken age buy deal rather reason red report soon third turn whether among check development form further heart
minutes myself services yourself act although asked child fire fun living major media phone players art behind
building easy market near plan quite six talking west works according available education final former front
kids list ready sometimes son street bring college current example experience heard meet program type baby
chance father march process song study word across action clear gave gets himself month outside self students
words board cost cut field held instead main moment mother road seems thinking town wants department energy
fight fine force hear issue played points price rest results running shows space summer term wife beautiful
date goes land miss project site strong account especially eyes include parents period position record similar
total above club common film happened knew lead likely perfect personal security share won center county
couple happen hold industry inside issues online player private problems return rights sense star test view
weeks break companies event higher hour member middle needed present result sorry takes training wish answer
boy design finally girls gold gone guess interest king learn policy society added alone average bank brought
certain church east hands hot longer medical movie original park performance press received role sent
themselves tried worked worth areas became bill books cool director exactly giving ground meeting provide
questions relationship sound source usually value evidence follow lives official production rate reading round
save stand stuff tax whatever amount blue countries drive eat fall fast federal feeling felt green league
management match model picture size step trust central changes forward groups key mom page paid range review
science trade upon various attention brother cannot character chief cup football led looked lower natural
property quality send style amazing august complete dog economic involved itself language oil related serious
stage terms title add article born decided decision enjoy entire met perhaps poor release situation technology
turned website written choice code considered continue council cover currently door events financial foreign
hair increase legal lose pick race seem seven sign simple simply staff super union walk bed began built career
changed crazy daily daughter die difficult figure hospital knows loss modern ones paper parts popular
published safe starting systems version voice whose writing earth forget goal huge internet listen okay
practice rules sea sir success towards waiting ways access base below created deep followed mark missing offer
pass professional released risk schools sleep table ten truth ball box build card cases dark district mine
note percent piece products recent seeing straight visit wall wrote allowed boys culture fans gives growth
included married officer places respect response river rock shall speak specific standard tonight write album
century charge cold create effect eight except eye funny limited moving network peace provided recently
required sales spent store student tomorrow track watching weight addition ahead allow association beat brown
capital committee conference difference double expect gas island moved normal plans population potential
pressure radio station text treatment western beginning campaign certainly completely content credit cross
described despite female focus husband ice individual interesting join kept leading loved message miles nearly
particular previous quickly region reported section sort speed travel consider contact drop fair feet kid link
positive sale throughout tour welcome absolutely additional beyond conditions earlier extra forces immediately
jobs leaving minute nature numbers quick sell significant studies unless winning agree clean computer
construction episode favorite income justice levels manager movement photo posted safety scene sold sounds
spend statement sun teams ability announced asking calling coach collection continued costs definitely
designed expected happens heavy includes knowledge particularly search subject train wide wow author claim dad
developed fear fit generally global goals hotel interested judge lady leader letter lines material named
nobody opportunity plus product regular secretary sister stories unit workers annual anymore bar brain
contract degree families features finished floor growing hurt image insurance majority meant opening opinion
physical reach rule seriously sports successful active approach biggest civil dance defense direction
independent master none reasons ship stock weekend wonder worst awesome band beach cash clearly commercial
compared effort ended fan fighting imagine impact lack latest learning multiple older operation organization
passed pictures protect secret senior spring telling wear activities address analysis anyway bought calls
choose color commission competition details direct dream easily finish grand increased literally luck marriage
names necessary patients resources rich skin speaking supposed sweet thus touch yesterday caught closed damage
directly doctor doubt drink driving established feels fish glad greater grow largest machine notice overall
planning professor programs records reports shown sit trip associated basic captain carry cars effective
effects explain fully highly holding laws male parties plant reality spot winter worse advice agreement award
block broken caused challenge characters comment equipment eventually helped lived lots nation otherwise
prices primary purpose rates responsible shop showing teacher theory uses agency avoid camera catch cell coast
comments economy environment executive foot hall mass meaning mission nine officers operations pop produced
ran status therefore trial truly weather activity app application claims coffee complex condition division
evening flight freedom heat highest interview library located location offered putting queen seconds showed
sitting standing stars walking accept actual appear attempt broke channel distance eating exchange fell
finding glass learned losing mobile northern opened placed powerful prior protection reached receive religious
ride royal screen serve signed slow species speech traffic tree types wearing whom wonderful agreed airport
animals appears begin benefits bottom cities demand engine everybody famous ideas investment keeping lie notes
partner plays raised runs sad solution songs sources southern square stopped structure traditional twice wind
worry appeared becomes brand bus cent count covered critical digital forced fourth fresh lake mental mentioned
missed mostly mouth owner photos previously realize remain scale score separate smart starts surface throw
totally views wedding acting actions arms benefit budget click estate failed faith fashion feature fund
generation hearing hill larger metal mid profile pull push returned rose seat seemed target village agent
animal apply authority basis becoming draw employees enter follows foundation gain individuals leaders memory
prime projects ring rise selling served silver soul spread supply waste weird adult apparently artist chairman
edition engineering grade happening healthy institute method nations obviously option provides remains senate
smaller somebody stone strength users wild window winner arrived bag bet camp cast continues correct dangerous
extremely firm greatest handle improve indeed leaves movies negative prevent removed spirit television till
trouble videos advantage apart aware cat customers decide dinner dollars eastern fifth function gift helping
herself impossible influence items marketing materials nor produce progress proud require shut standards tells
thinks van wood background birth bridge carried classes completed concept copy dear dogs efforts garden host
housing journal labor leadership length lucky neither onto patient possibly prove rare setting skills software
thousands tough units alive apple balance birthday boss cards changing connection dress easier fellow horse
knowing liked magic managed map net owned request stick turns vehicle volume wake aid beauty believed billion
busy buying cells concerned conversation corner cultural develop driver ends existing farm file fix fly guide
images operating paying presented raise roll slightly suggest surprise technical thoughts treat unique variety
yours youth appreciate bigger breaking discovered dry edge evil excited forever funds helps iron lovely mad
magazine models offers ordered prepared reference religion sites somewhere stated strategy teachers web wine
accounts arm audience bay blog closer core description dropped excellent exist figures forms guard honest
issued joined lies likes medicine mention mountain nuclear orders port presence reaction reduce sides solid
sport steps stress taste tea victory afternoon assistant citizens classic clothes decisions electric emergency
entered entirely facts failure festival flat fuel hello houses ill initial introduced kick links mail massive
matters pair picked pieces plane plenty prince proper providing quarter regional session shape sky teaching
toward transfer upper useful valley watched willing windows zone accident advanced alternative anywhere
articles awards bear boat bringing capacity cheap climate communities discussion drinking duty fantastic
feelings flying hundred industrial joint mix museum options path plants policies promise proposed purchase
rain remove signs spending steel supporting terrible tired treated turning vice warm afraid arts beer border
command crew crowd dating elements ensure filled fixed forest intelligence intended limit moon ocean powers
profit proof suit wins appearance attorney banks behavior bodies brothers buildings chair creating debt
domestic expensive grew historical homes honestly honor jump launch listed minimum native noted originally
planned ray sets suddenly supreme survey tech trees update user writer yellow younger ancient charges combined
connected contains download email ending exercise express flow formed hero increasing joke loan methods
officials performed planet restaurant selected shared shopping soft stuck sugar suggested supported surprised
taught transport accepted adding affairs allows appeal applied appropriate artists confirmed device drama
entry era factor feed golden grant grown heads hoping keeps lawyer legs lying measures mistake platform pool
pulled regarding relations requires route saved schedule scientific shoes smoke squad teach testing tests
values walked businesses candidate comfortable concern developing discuss emotional everywhere facilities
falling fox hole holiday interests internal laugh leg letters listening loves lunch milk pack payment perform
recorded relatively sector sharing snow storm streets strike studio weak actor advance apartment chain chapter
committed confidence cook cute equal fake finance focused hits identity journey kitchen leads maintain measure
numerous owners posts properties quiet revealed specifically split task taxes twenty urban acts affected
aircraft applications approved argument claimed conflict considering corporate debate determined distribution
documents escape extended factors faster fault fill films flowers friendly ladies lay lights millions mixed
phase properly pure reduced requirements residents revenue sat secure smile strange talent temperature
thousand truck authorities basically besides bird blame bowl causes chicken collected context coverage
determine display elected examples experienced falls false fired forgot funding identified incredible inspired
launched meat ministry mode neck noticed novel obvious passing positions remaining scored shirt shots slowly
stadium stores trading vision whenever worried zero allowing begins champion charged cream crisis delivered
editor estimated giant kingdom literature minor moments opposite orange ourselves pages remained selection
serving signal stream struggle talked theme tiny typically usual vehicles walls wave assembly breakfast bright
brings capable carrying chosen combination customer cutting desire destroyed draft essential fail familiar
finds granted humans hundreds improved largely laughing markets medium papers perfectly recommend referred
relevant seek sending solo spoke stands talks ticket unable upset wing answers birds creative cycle dealing
directed educational extreme facility fields goods hang holds info mainly maximum newspaper offering painting
reserve returns row salt scared shares statistics switch territory threat tickets adults affect appointed
armed aside assistance bell blow bond careful concerns controlled corporation cry danger deals delivery
deserve devices dollar dreams empty enjoyed explained faces folks gender instance matches mile motion moves
pacific prize realized reasonable receiving register resolution rural saving sees singing tools typical
universe warning admit attitude branch conducted decades dedicated definition drawing favor flag frame guest
heaven independence institutions load plot possibility random recovery rent replace represent reviews scenes
seeking sentence teeth tips trained understood academic academy accurate achieve afford assume bottle bunch
category chat cheese chemical competitive detail diet fruit harder index item lane mess normally occurred
opposition parent permanent personally pleasure prefer programme scheme shift stood storage tank tend tight
ultimately unlike weekly yard anybody assets basketball button candidates constitution consumer counter
creation crown defined depending describe drivers employment exclusive excuse expert frequently golf grace
hopefully identify importance laid latter mining object partners pattern performing personnel perspective
premier promote revolution rooms severe sleeping suppose tool tournament agents attend ban brilliant carbon
chose circle concert crash declared deliver depth deputy doctors earned electronic error existence experiences
expression factory headed interior joy legislation maintenance manner mate nearby noise origin panel
personality plate practices prepare relief replaced resistance retail rice roads roof shame ships somewhat
staying stronger surely tip updated writers absolute advertising agencies baseball bathroom cable calm
championship checked client constant dates degrees doors driven empire exciting expansion heavily hide
incident linked manage messages print quit refused reporting sight sing wet widely
""".split())


def _held_out(word: str) -> bool:
    # blake2b of the word, not hash(): Python salts str hashes per process; this split never moves.
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "big") % HELD_OUT_EVERY == 0


HELD_OUT_WORDS = tuple(w for w in WORDS if _held_out(w))
TRAIN_WORDS = tuple(w for w in WORDS if not _held_out(w))


class FontsMissing(ValueError):
    """Too few of FONT_FILES are installed to make the train / held-out font split."""


@lru_cache(maxsize=None)
def installed_fonts(root: Path = FONT_ROOT) -> tuple[str, ...]:
    """The FONT_FILES present under `root`, sorted (the same installed packages give the same list)."""
    return tuple(sorted(f for f in FONT_FILES if (root / f).is_file()))


def font_split(root: Path = FONT_ROOT) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(train fonts, held-out fonts) among the installed ones, or FontsMissing naming the packages to install."""
    fonts = installed_fonts(root)
    train = tuple(f for f in fonts if f not in HELD_OUT_FONTS)
    held = tuple(f for f in fonts if f in HELD_OUT_FONTS)
    if len(fonts) < 3 or not train or not held:
        raise FontsMissing(f"the reading curriculum needs at least 3 fonts with one held out, found {len(fonts)} "
                           f"under {root} ({', '.join(fonts) or 'none'}): apt-get install {FONT_PACKAGES}")
    return train, held


@lru_cache(maxsize=256)
def _font(rel: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(FONT_ROOT / rel), size)


_WORD_SET = frozenset(WORDS)


def _nonce_word(rng: random.Random) -> str:
    while True:  # never a real word: a held-out word must not appear in any training stream
        word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, 9)))
        if word not in _WORD_SET:
            return word


def _token(rng: random.Random, vocab: tuple[str, ...] | None) -> str:
    """A token of `vocab`, or a nonce word when `vocab` is None (reading_nonce)."""
    if rng.random() < 0.05:
        return str(rng.randint(1, 9999))
    word = _nonce_word(rng) if vocab is None else rng.choice(vocab)
    r = rng.random()
    return word.capitalize() if r < 0.10 else word.upper() if r < 0.13 else word


def _line(rng: random.Random, vocab, fnt, max_w: int, count: int, punctuate: bool) -> str:
    """Up to `count` tokens that fit in `max_w` pixels, at least one."""
    tokens: list[str] = []
    for k in range(count):
        tok = _token(rng, vocab)
        if punctuate and k < count - 1 and rng.random() < 0.08:
            tok += ","
        if tokens and fnt.getlength(" ".join(tokens + [tok])) > max_w:
            break
        # A first token too wide (a long UPPER CASE word at the largest sizes) is drawn again, never cut:
        # a cut word could be a held-out word.
        while not tokens and fnt.getlength(tok) > max_w:
            tok = _token(rng, vocab)
        tokens.append(tok)
    text = " ".join(tokens).rstrip(",")
    if punctuate and rng.random() < 0.3 and fnt.getlength(text + ".") <= max_w:
        text += "."
    return text


def _pick_level(rng: random.Random) -> str:
    r = rng.random()
    for level, p in LEVELS:
        if r < p:
            return level
        r -= p
    return LEVELS[-1][0]


def _contrast(rng: random.Random) -> tuple[int, int]:
    """(background, ink) grey levels at least 90 apart; 10% light text on a dark ground."""
    if rng.random() < 0.1:
        bg = rng.randint(0, 90)
        return bg, rng.randint(bg + 90, 255)
    bg = rng.randint(165, 255)
    return bg, rng.randint(0, bg - 90)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")  # PIL writes no timestamp chunk: same pixels -> same bytes
    return buf.getvalue()


def _degrade(img: Image.Image, rng: random.Random, info: dict) -> Image.Image:
    """Blur, noise and a JPEG round trip, each with probability 0.3 (what a camera or a scanner does)."""
    if rng.random() < 0.3:
        info["blur"] = round(rng.uniform(0.3, 1.0), 3)
        img = img.filter(ImageFilter.GaussianBlur(info["blur"]))
    if rng.random() < 0.3:
        info["noise"] = round(rng.uniform(2.0, 10.0), 3)
        noise = np.random.default_rng(rng.getrandbits(64)).normal(0.0, info["noise"], (img.height, img.width))
        img = Image.fromarray(np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).round().astype(np.uint8))
    if rng.random() < 0.3:
        info["jpeg"] = rng.randint(30, 90)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=info["jpeg"])
        img = Image.open(io.BytesIO(buf.getvalue())).convert("L")
    return img


def sample(name: str, seed: int, i: int) -> tuple[dict, dict]:
    """(record, rendering parameters) of sample `i` of generator `name`; depends on nothing but the three.
    A `reading_crop*` name draws the sample of its uncropped split (CROPS) and crops it to the text (_crop); a
    `reading_big*` name one big word of its split's words and fonts, cropped; a `reading_small*` name one word in small
    print cut to its box (_word_box_crop); `reading_cells*` is cells_sample's."""
    if name in CELLS:
        return cells_sample(name, seed, i)
    if name not in SPLITS and name not in CROPS and name not in BIG and name not in SMALL:
        raise ValueError(f"unknown reading generator {name!r}; "
                         f"expected one of {sorted({**SPLITS, **CROPS, **BIG, **SMALL, **CELLS})}")
    # whose words and fonts: a crop draws its split's sample i
    split = CROPS.get(name) or BIG.get(name) or SMALL.get(name) or name
    unseen_words, unseen_fonts = SPLITS[split]
    train_fonts, held_fonts = font_split()
    vocab = None if split in NONCE else HELD_OUT_WORDS if unseen_words else TRAIN_WORDS
    rng = random.Random(f"{split}:{seed}:{i}")
    level = _pick_level(rng)  # drawn for every name, even where overridden: the same samples as the measured runs
    if split == "reading_nonce_words":
        level = "word"
    if name in BIG or name in SMALL:
        level = "big" if name in BIG else "small"
    font_rel = rng.choice(held_fonts if unseen_fonts else train_fonts)
    width = rng.randint(512, 640)
    max_w = width - 32  # at least 16 px of margin each side
    if level in ("big", "small"):
        size, counts, punctuate = rng.randint(*(BIG_EM if level == "big" else SMALL_EM)), [1], False
    elif level == "word":
        size, counts, punctuate = rng.randint(32, 64), [rng.randint(1, 3)], False
    elif level == "line":
        size, counts, punctuate = rng.randint(24, 40), [rng.randint(4, 10)], True
    else:
        size, punctuate = rng.randint(22, 32), True
        counts = [rng.randint(3, 8) for _ in range(rng.randint(2, 5))]
    fnt = _font(font_rel, size)
    lines = [_line(rng, vocab, fnt, max_w, c, punctuate) for c in counts]
    ascent, descent = fnt.getmetrics()
    step = int(size * rng.uniform(1.2, 1.5))
    text_w = min(max_w, math.ceil(max(fnt.getlength(line) for line in lines)))
    text_h = (len(lines) - 1) * step + ascent + descent
    height = max(text_h + 32, rng.randint(96, 400))
    bg, fg = _contrast(rng)
    x, y = rng.randint(16, width - 16 - text_w), rng.randint(16, height - 16 - text_h)
    img = Image.new("L", (width, height), bg)
    draw = ImageDraw.Draw(img)
    for k, line in enumerate(lines):
        draw.text((x, y + k * step), line, font=fnt, fill=fg)
    info = {"level": level, "font": font_rel, "size": size, "fg": fg, "bg": bg, "lines": lines,
            "blur": None, "noise": None, "jpeg": None}
    if name in CROPS or name in BIG:
        mask = Image.new("L", img.size, 0)  # the ink alone: the glyphs' own box, bearings excluded
        ink = ImageDraw.Draw(mask)
        for k, line in enumerate(lines):
            ink.text((x, y + k * step), line, font=fnt, fill=255)
        img, info["crop"] = _crop(img, bg, mask.getbbox(), random.Random(f"{name}:{seed}:{i}"))
    if name in SMALL:  # the word's box as pdftotext gives it: its advance by the font's line height
        box = (x, y, x + math.ceil(fnt.getlength(lines[0])), y + ascent + descent)
        img, info["crop"] = _word_box_crop(img, bg, box, random.Random(f"{name}:{seed}:{i}"))
    img = _degrade(img, rng, info)
    rid = f"{name}-s{seed}-{i:06d}-{level}-{Path(font_rel).stem}"
    return qa(OCR_PROMPT, "\n".join(lines), png_bytes(img), rid, f"synthetic:{name}"), info


def _crop(img: Image.Image, bg: int, ink: tuple, rng: random.Random) -> tuple[Image.Image, tuple]:
    """The text's ink box plus small random margins, as a text-line crop from a page is (nanoocr.eval.lines),
    widened on the right with background to at least CROP_MIN_WIDTH so a short word is not blown up by the
    view's resize. Returns the crop and its box (x0, y0, x1, y1) on the canvas (x1 may pass the canvas's edge)."""
    left, top, right, bottom = ink
    x0, y0 = max(0, left - rng.randint(*CROP_MARGIN_X)), max(0, top - rng.randint(*CROP_MARGIN_Y))
    x1 = max(right + rng.randint(*CROP_MARGIN_X), x0 + CROP_MIN_WIDTH)
    y1 = min(img.height, bottom + rng.randint(*CROP_MARGIN_Y))
    out = Image.new("L", (x1 - x0, y1 - y0), bg)
    out.paste(img.crop((x0, y0, min(x1, img.width), y1)), (0, 0))
    return out, (x0, y0, x1, y1)


def _word_box_crop(img: Image.Image, bg: int, box: tuple, rng: random.Random) -> tuple[Image.Image, tuple]:
    """A word's box plus the margins nanoocr.eval.lines keeps around a real one (2 pt left and right, 0.5 pt above
    and below at 150 dpi: ~4 and ~1 px, drawn from SMALL_MARGIN_X / _Y), no widening: a real word crop is small, and
    the view scales it up. Returns the crop and its box on the canvas."""
    left, top, right, bottom = box
    x0, y0 = max(0, left - rng.randint(*SMALL_MARGIN_X)), max(0, top - rng.randint(*SMALL_MARGIN_Y))
    x1 = min(img.width, right + rng.randint(*SMALL_MARGIN_X))
    y1 = min(img.height, bottom + rng.randint(*SMALL_MARGIN_Y))
    return img.crop((x0, y0, x1, y1)), (x0, y0, x1, y1)


def cells_sample(name: str, seed: int, i: int) -> tuple[dict, dict]:
    """(record, parameters) of a letters-in-cells strip (CELLS): CELLS_WIDTH x the font's line box plus 1-8 px, letter
    j centred in the CELL px cell that starts CELL * j + 2-12 px from the left edge."""
    split = CELLS[name]
    unseen_words, unseen_fonts = SPLITS[split]
    train_fonts, held_fonts = font_split()
    vocab = None if split in NONCE else HELD_OUT_WORDS if unseen_words else TRAIN_WORDS
    rng = random.Random(f"{name}:{seed}:{i}")
    font_rel = rng.choice(held_fonts if unseen_fonts else train_fonts)
    fnt = _font(font_rel, rng.randint(*CELLS_EM))
    x, top, bottom = rng.randint(*CROP_MARGIN_X), rng.randint(*CROP_MARGIN_Y), rng.randint(*CROP_MARGIN_Y)
    text = _token(rng, vocab)
    while len(text) > CELLS_WIDTH // CELL - 1:  # the last cell is cut by the margin: at most 7 letters
        text = _token(rng, vocab)
    ascent, descent = fnt.getmetrics()
    bg, fg = _contrast(rng)
    img = Image.new("L", (CELLS_WIDTH, top + ascent + descent + bottom), bg)
    draw = ImageDraw.Draw(img)
    for j, c in enumerate(text):
        draw.text((x + CELL * j + round((CELL - fnt.getlength(c)) / 2), top), c, font=fnt, fill=fg)
    info = {"level": "cells", "font": font_rel, "size": fnt.size, "fg": fg, "bg": bg, "lines": [text], "x": x,
            "blur": None, "noise": None, "jpeg": None}
    img = _degrade(img, rng, info)
    rid = f"{name}-s{seed}-{i:06d}-cells-{Path(font_rel).stem}"
    return qa(OCR_PROMPT, text, png_bytes(img), rid, f"synthetic:{name}"), info


def _stream(name: str, n: int, seed: int) -> Iterator[dict]:
    font_split()  # fail on missing fonts at the first record, not mid-stream
    for i in range(n):
        yield sample(name, seed, i)[0]


def reading(n: int, seed: int = 0) -> Iterator[dict]:
    """Training stream: train words in train fonts."""
    return _stream("reading", n, seed)


def reading_unseen_words(n: int, seed: int = 0) -> Iterator[dict]:
    """Held-out words (never in `reading`) in train fonts."""
    return _stream("reading_unseen_words", n, seed)


def reading_unseen_fonts(n: int, seed: int = 0) -> Iterator[dict]:
    """Train words in the held-out fonts (never in `reading`)."""
    return _stream("reading_unseen_fonts", n, seed)


def reading_nonce(n: int, seed: int = 0) -> Iterator[dict]:
    """Training stream: random letter strings (never a word of WORDS) in train fonts."""
    return _stream("reading_nonce", n, seed)


def reading_nonce_words(n: int, seed: int = 0) -> Iterator[dict]:
    """Training stream: 1-3 random letter strings at 32-64 px (the word level of reading_nonce only)."""
    return _stream("reading_nonce_words", n, seed)


# name -> (held-out words?, held-out fonts?)
SPLITS = {"reading": (False, False), "reading_unseen_words": (True, False), "reading_unseen_fonts": (False, True),
          "reading_nonce": (False, False), "reading_nonce_words": (False, False)}
# Text-line crops: crop name -> the split whose sample i it crops (same text, font, size, degradations).
CROPS = {"reading_crop": "reading", "reading_crop_unseen_words": "reading_unseen_words",
         "reading_crop_unseen_fonts": "reading_unseen_fonts", "reading_crop_nonce": "reading_nonce",
         "reading_crop_nonce_words": "reading_nonce_words"}
CROP_MARGIN_X, CROP_MARGIN_Y = (2, 12), (1, 8)  # pixels of background kept around the ink, drawn per side
CROP_MIN_WIDTH = 384
# One big word cropped: big name -> the split whose words and fonts it draws (its own samples, not the split's).
BIG = {"reading_big": "reading", "reading_big_unseen_words": "reading_unseen_words",
       "reading_big_unseen_fonts": "reading_unseen_fonts", "reading_big_nonce": "reading_nonce"}
BIG_EM = (80, 120)  # em in pixels: about one lowercase letter per 64 px token
# One word in small print, cut as a real word is: small name -> the split whose words and fonts it draws.
SMALL = {"reading_small": "reading", "reading_small_unseen_words": "reading_unseen_words",
         "reading_small_unseen_fonts": "reading_unseen_fonts", "reading_small_nonce": "reading_nonce"}
SMALL_EM = (14, 28)  # 7-13 pt at 150 dpi, nanoocr.eval.lines' render of the Debian manuals (10 pt: ~21 px)
SMALL_MARGIN_X, SMALL_MARGIN_Y = (2, 6), (0, 2)
# One word, a letter per cell: cells name -> the split whose words and fonts it draws.
CELLS = {"reading_cells": "reading", "reading_cells_unseen_words": "reading_unseen_words",
         "reading_cells_unseen_fonts": "reading_unseen_fonts", "reading_cells_nonce": "reading_nonce"}
CELL, CELLS_WIDTH = 64, 512  # the cell (letter pitch) and the strip's width in pixels: the tiny view keeps both
CELLS_EM = (64, 88)  # the em in pixels: lowercase letters fill half to most of a cell, the widest capitals all of it
NONCE = ("reading_nonce", "reading_nonce_words")  # the generators whose tokens are random letter strings
FINE_LONG, SPOT_LONG, PAGE_ASPECT = (1600, 2048), (800, 1024), 1.5  # page long sides; long / short (3 x 2 tiles)
PAGE_EM = (100, 130)  # Gundam's tiles show it at about the size big words reach the tiny view (crops of >= 384 px)
# A word on a page: name -> (held-out words, else nonce tokens?; the page's long side; the level in the id).
PAGES = {"reading_fine": (False, FINE_LONG, "fine"), "reading_fine_unseen_words": (True, FINE_LONG, "fine"),
         "reading_spot_nonce": (False, SPOT_LONG, "spot"), "reading_spot_unseen_words": (True, SPOT_LONG, "spot")}


def page_sample(name: str, seed: int, i: int) -> tuple[dict, dict]:
    """(record, parameters) of a page holding one token at an em of 100-130 px (PAGE_EM) anywhere on it, the page
    ~1.5:1, portrait or landscape. Fine-text pages (`reading_fine*`, 1600-2048 px long): fine for the model's view,
    Gundam's grid (3 x 2 tiles of 640 px for nearly every such page) shows the word at 0.9-1.2x, about the size the
    big words stage reads (crops of >= 384 px resized to 512: ~1-1.5 letters per vision token), while the Base view
    (1024 px) shrinks it by 0.5-0.64, to about half the letters' width in tokens. Spot pages (`reading_spot*`,
    800-1024 px long) are what the Base view sees of a fine page, at the tiny view's cost: the word at 0.5-0.64x
    anywhere in the 8 x 8 grid, to learn to find it. The train splits draw nonce tokens (random letter strings, as
    reading_big_nonce), the eval splits held-out words; train fonts, the curriculum's contrast and degradations."""
    if name not in PAGES:
        raise ValueError(f"unknown page reading generator {name!r}; expected one of {sorted(PAGES)}")
    held_out, long_range, level = PAGES[name]
    train_fonts, _ = font_split()
    rng = random.Random(f"{name}:{seed}:{i}")
    font_rel = rng.choice(train_fonts)
    long_side = rng.randint(*long_range)
    short_side = round(long_side / PAGE_ASPECT * rng.uniform(0.95, 1.05))
    width, height = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
    fnt = _font(font_rel, rng.randint(*PAGE_EM))
    text = _token(rng, HELD_OUT_WORDS if held_out else None)
    left, top, right, bottom = fnt.getbbox(text)
    while right - left > width - 32:  # a long word on a narrow (portrait spot) page: smaller, no new draw
        fnt = _font(font_rel, fnt.size - 4)
        left, top, right, bottom = fnt.getbbox(text)
    x, y = rng.randint(16 - left, width - 16 - right), rng.randint(16 - top, height - 16 - bottom)
    bg, fg = _contrast(rng)
    img = Image.new("L", (width, height), bg)
    ImageDraw.Draw(img).text((x, y), text, font=fnt, fill=fg)
    info = {"level": level, "font": font_rel, "size": fnt.size, "fg": fg, "bg": bg, "lines": [text],
            "page": (width, height), "box": (x + left, y + top, x + right, y + bottom),
            "blur": None, "noise": None, "jpeg": None}
    img = _degrade(img, rng, info)
    rid = f"{name}-s{seed}-{i:06d}-{level}-{Path(font_rel).stem}"
    return qa(OCR_PROMPT, text, png_bytes(img), rid, f"synthetic:{name}"), info


def _page_generator(name: str):
    def gen(n: int, seed: int = 0) -> Iterator[dict]:
        font_split()  # fail on missing fonts at the first record, not mid-stream
        return (page_sample(name, seed, i)[0] for i in range(n))
    held_out, long_range, _ = PAGES[name]
    gen.__name__ = name
    gen.__doc__ = (f"One {'held-out word' if held_out else 'nonce token'} on a page {long_range[0]}-{long_range[1]} px "
                   "long (page_sample).")
    return gen


def _generator(name: str, doc: str):
    def gen(n: int, seed: int = 0) -> Iterator[dict]:
        return _stream(name, n, seed)
    gen.__name__, gen.__doc__ = name, doc
    return gen


READING_GENERATORS = {**{name: _generator(name, f"Text-line crops of `{split}`: sample i is its sample i cut to the "
                                                 "text (_crop).") for name, split in CROPS.items()},
                      **{name: _generator(name, f"One big word of `{split}`'s words and fonts, cropped (BIG_EM).")
                         for name, split in BIG.items()},
                      **{name: _generator(name, f"One word of `{split}`'s words and fonts in small print, cut to its "
                                                "box as a real word is (SMALL_EM).") for name, split in SMALL.items()},
                      **{name: _generator(name, f"One word of `{split}`'s words and fonts, a letter per 64 px cell "
                                                "(cells_sample).") for name, split in CELLS.items()},
                      "reading": reading, "reading_unseen_words": reading_unseen_words,
                      "reading_unseen_fonts": reading_unseen_fonts, "reading_nonce": reading_nonce,
                      "reading_nonce_words": reading_nonce_words,
                      **{name: _page_generator(name) for name in PAGES}}
