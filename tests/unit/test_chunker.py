"""Clause chunking of streamed LLM text for TTS (`callroom.voice.chunker`)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callroom.voice.chunker import ClauseChunker, chunk_text, normalize_for_speech


def _stream(text: str, pieces: list[int] | None = None, **options: int) -> list[str]:
    """Feed `text` in pieces of the given sizes (one character at a time by default)."""
    chunker = ClauseChunker(**options)
    out: list[str] = []
    pos = 0
    for size in pieces or [1] * len(text):
        out += chunker.push(text[pos : pos + size])
        pos += size
    out += chunker.push(text[pos:])
    return out + chunker.flush()


def _no_ws(text: str) -> str:
    return re.sub(r"\s+", "", text)


# -- when chunks come out ----------------------------------------------------------------------
def test_first_clause_goes_out_as_soon_as_its_boundary_is_certain() -> None:
    chunker = ClauseChunker()
    assert chunker.push("Okay, so your appointment") == []  # "Okay," is too short to say alone
    assert chunker.push(" is on Monday") == []
    assert chunker.push(",") == []  # "Monday,5" could still be a number
    assert chunker.push(" at 10") == ["Okay, so your appointment is on Monday,"]
    assert chunker.push(":30 with Dr. Smith.") == []  # later chunks wait for a sentence end...
    assert chunker.push(" See") == ["at 10:30 with Dr. Smith."]
    assert chunker.flush() == ["See"]


@pytest.mark.parametrize("mark", [",", ";", ":", "—", " -", " \u2013"])
def test_every_clause_mark_can_end_the_first_chunk(mark: str) -> None:
    text = f"I can check that for you{mark} one moment please."
    chunks = chunk_text(text)
    assert chunks[0] == f"I can check that for you{mark}".replace(" -", " -").strip()
    assert _no_ws("".join(chunks)) == _no_ws(text)


def test_first_sentence_needs_three_words_first_clause_four() -> None:
    assert chunk_text("Sure thing! I have booked it for you now.") == [
        "Sure thing! I have booked it for you now."
    ]
    assert chunk_text("Yes, I can. Your table is booked.") == [
        "Yes, I can.",
        "Your table is booked.",
    ]
    assert chunk_text("Sure, I can do that, no problem at all.") == [
        "Sure, I can do that,",
        "no problem at all.",
    ]
    assert chunk_text("That works for me! Bye now.") == ["That works for me!", "Bye now."]


def test_later_chunks_are_sentences_or_long_clauses() -> None:
    text = (
        "Thanks for calling Bright Smile. "
        "Our hours are nine to five, Monday to Friday, and ten to two on Saturday. "
        "Got it. See you soon. "
        "If you need to cancel for any reason at all, including illness or travel, "
        "please call us a day ahead."
    )
    assert chunk_text(text) == [
        "Thanks for calling Bright Smile.",
        "Our hours are nine to five, Monday to Friday, and ten to two on Saturday.",
        "Got it. See you soon.",  # a short sentence rides with the next: fewer TTS calls
        "If you need to cancel for any reason at all, including illness or travel,",
        "please call us a day ahead.",
    ]


def test_question_and_exclamation_end_sentences() -> None:
    assert chunk_text("Is that the one you wanted? Great, I will book it now!") == [
        "Is that the one you wanted?",
        "Great, I will book it now!",
    ]


def test_a_run_without_punctuation_is_cut_at_max_words() -> None:
    text = " ".join(f"w{i}" for i in range(25))
    chunks = chunk_text(text, max_words=12, clause_min_words=12)
    assert [len(c.split()) for c in chunks] == [12, 12, 1]


# -- where chunks never split ------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "The total comes to 3.5 dollars per unit for every single order today.",
        "We have shipped 1,000 units and 2,500.75 kilos to the warehouse so far.",
        "Your appointment with Dr. Smith and Mrs. Jones is confirmed for next week.",
        "Mr. and Ms. Lee live on Elm St. near the park by the river.",
        "Please bring e.g. a passport or i.e. any card that has your photo on it.",
        "We open at 9 a.m. tomorrow and close at 5 p.m. on most weekdays.",
        "The meeting starts at 10:30 and ends at 11:45 in the big room.",
        "Visit https://example.com/a.b?x=1,2&y=3 for the full list of details.",
        "Write to help.desk@example.co.uk or call the front desk any time.",
        "Version 2.0.1 is compatible with the ratio 3:1 and the range 10-12 too.",
        "The book by J. K. Rowling was published in the U.S. in the late nineties.",
        "It was a well-known fact that the price was 4.99 per pound at the time.",
    ],
)
def test_no_split_inside_numbers_abbreviations_times_urls(text: str) -> None:
    assert chunk_text(text) == [text]
    assert _stream(text) == [text]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("We open at 9 a.m. Please come early.", ["We open at 9 a.m.", "Please come early."]),
        ("We close at 5 p.m. sharp on Fridays, sadly.",
         ["We close at 5 p.m. sharp on Fridays,", "sadly."]),
        ("Bring pens, paper, etc. We supply the rest.",
         ["Bring pens, paper, etc.", "We supply the rest."]),
        ("No. I am afraid that is taken.", ["No. I am afraid that is taken."]),
        ("That slot is gone sadly. No. 5 is still free though.",
         ["That slot is gone sadly.", "No. 5 is still free though."]),
        ("Find us at example.com. It has every detail.",
         ["Find us at example.com.", "It has every detail."]),
        ("The price is $3. That includes tax.", ["The price is $3.", "That includes tax."]),
    ],
)  # fmt: skip
def test_abbreviations_that_can_end_a_sentence(text: str, expected: list[str]) -> None:
    assert chunk_text(text) == expected
    assert _stream(text) == expected


def test_ellipsis_is_a_clause_pause_not_a_sentence_end() -> None:
    assert chunk_text("Well... let me think about that one for a moment. Okay.") == [
        "Well... let me think about that one for a moment.",
        "Okay.",
    ]
    assert chunk_text("Let me see here… yes, that one is free.") == [
        "Let me see here…",
        "yes, that one is free.",
    ]


def test_closing_quotes_and_brackets_stay_with_their_sentence() -> None:
    assert chunk_text('He said "we are open late." Then he left the building.') == [
        'He said "we are open late."',
        "Then he left the building.",
    ]
    assert chunk_text("It is free (for members only.) Others pay five dollars.") == [
        "It is free (for members only.)",
        "Others pay five dollars.",
    ]


# -- markdown and lines ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "spoken"),
    [
        ("**Sure!** Here it is.", "Sure! Here it is."),
        ("Run `make test` now.", "Run make test now."),
        ("# Opening hours\nNine to five.", "Opening hours. Nine to five."),
        ("### Tip: bring ID", "Tip: bring ID"),
        ("- Monday\n- Tuesday\n* Friday\n+ Sunday", "Monday. Tuesday. Friday. Sunday"),
        ("1. Call us\n2) Book online", "Call us. Book online"),
        ("> Quoted words here", "Quoted words here"),
        ("Code:\n```python\nprint(1)\n```\nDone", "Code: print(1). Done"),
        ("Intro\n\n---\n\nOutro", "Intro. Outro"),
        (
            "Use __init__ and snake_case names, _not_ this.",
            "Use init and snake_case names, not this.",
        ),
        ("That is ~~wrong~~ right, about ~5 minutes.", "That is wrong right, about ~5 minutes."),
        ("Room #5, and #1 priority.", "Room #5, and #1 priority."),
        ("Lines\r\nwith CRLF\r\n", "Lines. with CRLF."),
        ("Trailing spaces  \nNext line", "Trailing spaces. Next line"),
        ("Temperature is -5 today.\n-3 tomorrow.", "Temperature is -5 today. -3 tomorrow."),
        ('Ends with a quote "Hi"\nNext', 'Ends with a quote "Hi". Next'),
    ],
)
def test_markdown_noise_is_removed(raw: str, spoken: str) -> None:
    assert normalize_for_speech(raw) == spoken
    assert " ".join(chunk_text(raw)) == spoken
    assert " ".join(_stream(raw)) == spoken


def test_newlines_are_boundaries() -> None:
    text = "Here are the open slots:\n- Monday at 9 a.m.\n- Tuesday afternoon at two\nWhich works?"
    assert chunk_text(text) == [
        "Here are the open slots:",
        "Monday at 9 a.m.",
        "Tuesday afternoon at two.",
        "Which works?",
    ]


# -- lifecycle ---------------------------------------------------------------------------------
def test_empty_and_blank_input() -> None:
    assert chunk_text("") == []
    assert chunk_text("   \n\t ") == []
    assert chunk_text("**") == []
    chunker = ClauseChunker()
    assert chunker.push("") == []
    assert chunker.flush() == []


def test_flush_resets_for_the_next_reply() -> None:
    chunker = ClauseChunker()
    assert chunker.push("Hello there, how are you doing today? I am") == [
        "Hello there, how are you doing today?"
    ]
    assert chunker.emitted == 1
    assert chunker.flush() == ["I am"]
    assert chunker.emitted == 0
    # the next reply is a "first" chunk again: early cut at a clause
    assert chunker.push("Sure, I can do that for you, ") == ["Sure, I can do that for you,"]


def test_reset_drops_an_interrupted_reply() -> None:
    chunker = ClauseChunker()
    chunker.push("**This reply gets interrupted")
    chunker.reset()
    assert chunker.push("Fresh start for the new one. ") == ["Fresh start for the new one."]


def test_thresholds_are_validated() -> None:
    with pytest.raises(ValueError):
        ClauseChunker(first_clause_min_words=0)
    with pytest.raises(ValueError):
        ClauseChunker(max_words=5, clause_min_words=12)


# -- properties --------------------------------------------------------------------------------
TOKENS = [
    "Dr.", "Mr.", "Mrs.", "St.", "e.g.", "i.e.", "a.m.", "p.m.", "etc.", "No.", "U.S.", "J.",
    "3.5", "1,000", "10:30", "https://x.io/a.b?c=1,2", "me@x.co.uk", "well-known",
    "Hello", "world", "yes", "the", "cat", "sat", "on", "mat", "I", "Smith", "snake_case",
    ",", ".", "!", "?", ";", ":", "—", "-", "\u2013", "...", "…", "(", ")", '"', "'", "#", "~",
    "**", "*", "_", "__", "~~", "`", "```", "## ", "- ", "* ", "1. ", "> ", "---",
    "\n", "\n\n", " ", "\t", "\r\n",
]  # fmt: skip
SEPARATORS = ["", " ", " ", " ", "\n"]

texts = st.lists(
    st.tuples(
        st.one_of(st.sampled_from(TOKENS), st.text(alphabet="ab .,!?\n*_`#-:", max_size=4)),
        st.sampled_from(SEPARATORS),
    ),
    max_size=50,
).map(lambda parts: "".join(tok + sep for tok, sep in parts))


@settings(max_examples=400, deadline=None)
@given(texts)
def test_chunks_concatenate_to_the_normalized_text(text: str) -> None:
    chunks = chunk_text(text)
    assert _no_ws("".join(chunks)) == _no_ws(normalize_for_speech(text))
    assert all(c and c == c.strip() and "  " not in c for c in chunks)


@settings(max_examples=400, deadline=None)
@given(texts, st.data())
def test_any_split_into_deltas_gives_the_same_chunks(text: str, data: st.DataObject) -> None:
    sizes = data.draw(st.lists(st.integers(1, 8), max_size=len(text)))
    assert _stream(text, sizes) == chunk_text(text)


@settings(max_examples=100, deadline=None)
@given(texts)
def test_character_by_character_gives_the_same_chunks(text: str) -> None:
    assert _stream(text) == chunk_text(text)


PROTECTED = ["Dr. Smith", "Mrs. Jones", "e.g. this", "at 9 a.m. sharp", "3.5 kg", "1,000 units",
             "at 10:30 today", "see https://x.io/a.b?c=1,2 now", "mail me@x.co.uk now"]  # fmt: skip
WORDS = ["we", "can", "book", "it", "for", "you", "today", "Yes", "Great", "the", "room"]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(PROTECTED),
            st.sampled_from(WORDS),
            st.sampled_from([w + p for w in WORDS for p in ",.!?;:"]),
        ),
        max_size=40,
    )
)
def test_protected_spans_are_never_split(words: list[str]) -> None:
    text = " ".join(words)
    chunks = chunk_text(text)
    for span in set(words) & set(PROTECTED):
        assert any(span in chunk for chunk in chunks), (span, chunks)
