"""The scripted calls of `eval_receptionist.py` and how each one is scored.

Kept apart from the runner so the cases and the scoring rules can be read (and unit-checked)
without starting anything. Standard library plus `examples/crm/app.py`'s seed definitions:
the expected dates come from the CRM's documented seed diary (`SEED_APPOINTMENTS`, counted in
weekdays from the seed date), not from asking the running CRM, so a CRM that answered with
the wrong date would fail the eval rather than define it.

What the caller says is ordinary phone phrasing, written before any backend was run and not
adjusted to what a model gets right: IDs are said as numbers ("4567") by some callers and
digit by digit ("one two three four") by others, dates as "Wednesday, December 2nd", times as
"2 PM" or "10:30 in the morning".
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from examples.crm.app import SEED_APPOINTMENTS, nth_weekday  # noqa: E402

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MONTHS = (
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
)
MUTATING_TOOLS = frozenset({"book_appointment", "cancel_appointment"})
APOLOGY_PREFIX = "sorry, i ran into a problem"
"""`VoiceAgent.apology_text`: what the caller hears when the turn failed inside callroom."""


# -- dates ----------------------------------------------------------------------------------------
def seed_date_for(today: dt.date) -> dt.date:
    """The CRM's seed date: the first weekday at least two days after `today`, so the seeded
    diary lies a few days ahead and every seeded appointment is still upcoming."""
    day = today + dt.timedelta(days=2)
    while day.weekday() >= 5:
        day += dt.timedelta(days=1)
    return day


def seeded_appointments(seed: dt.date) -> dict[int, dict[str, Any]]:
    """Appointment id -> {patient_id, date, time}, as `Clinic.init` inserts them (ids from
    1001 in `SEED_APPOINTMENTS` order)."""
    out: dict[int, dict[str, Any]] = {}
    for i, a in enumerate(SEED_APPOINTMENTS):
        out[1001 + i] = {
            "patient_id": a.patient_id,
            "date": nth_weekday(seed, a.weekday_offset),
            "time": a.time,
        }
    return out


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def said_date(day: dt.date) -> str:
    """How a caller says a date: "Wednesday, December 2nd"."""
    return f"{day:%A}, {day:%B} {ordinal(day.day)}"


_ORDINAL_WORDS = {
    w: i
    for i, w in enumerate(
        "zeroth first second third fourth fifth sixth seventh eighth ninth tenth eleventh "
        "twelfth thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth "
        "twentieth".split()
    )
}
_UNITS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen "
        "fourteen fifteen sixteen seventeen eighteen nineteen".split()
    )
}


def _numberise(text: str) -> str:
    """Day numbers in words to digits: "twenty-first" -> "21", "second" -> "2", "ninth" ->
    "9"; "2nd" -> "2". Only what a spoken date needs (1..31)."""
    t = text.lower().replace("-", " ")

    def tens(m: re.Match[str]) -> str:
        base = 20 if m.group(1) == "twenty" else 30
        rest = m.group(2)
        return str(base + (_ORDINAL_WORDS.get(rest) or _UNITS.get(rest, 0)))

    t = re.sub(
        r"\b(twenty|thirty) (first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|one|"
        r"two|three|four|five|six|seven|eight|nine)\b",
        tens,
        t,
    )
    t = re.sub(r"\bthirtieth\b", "30", t)
    t = re.sub(r"\b(" + "|".join(_ORDINAL_WORDS) + r")\b", lambda m: str(_ORDINAL_WORDS[m[1]]), t)
    return re.sub(r"\b(\d{1,2})(st|nd|rd|th)\b", r"\1", t)


def date_mention(text: str, day: dt.date) -> str | None:
    """Which way `text` names `day`, or None: "iso" (2026-12-02), "month-day" (December 2,
    Dec 2nd, December the second, 2 December, 12/2) or "weekday" (Wednesday) — the issue
    accepts any of them; the form found is reported so a weekday-only pass can be told apart.
    """
    if day.isoformat() in text:
        return "iso"
    t = _numberise(text)
    month = MONTHS[day.month - 1]
    mon = rf"(?:{month}|{month[:3]}\.?)"
    d = day.day
    patterns = (
        rf"\b{mon} (?:the )?0?{d}\b",
        rf"\b0?{d} (?:of )?{mon}\b",
        rf"\b0?{day.month}/0?{d}\b",
    )
    if any(re.search(p, t) for p in patterns):
        return "month-day"
    if re.search(rf"\b{WEEKDAYS[day.weekday()]}\b", t):
        return "weekday"
    return None


def mentions_any_date(text: str) -> bool:
    t = text.lower()
    return bool(
        re.search(r"\b\d{4}-\d{2}-\d{2}\b", t)
        or re.search(r"\b(" + "|".join(MONTHS) + r")\b", t)
        or re.search(r"\b(" + "|".join(WEEKDAYS) + r")\b", t)
    )


# -- arguments ------------------------------------------------------------------------------------
def parse_time(value: Any) -> int | None:
    """Minutes after midnight for "14:00", "14:00:00", "2 pm", "2:00 PM"; None otherwise. A
    bare "2:00" is 02:00 (as the CRM reads it), so a 12-hour time without am/pm fails."""
    s = str(value).strip().lower().replace(".", "")
    m = re.fullmatch(r"(\d{1,2})(?::(\d{2}))?(?::\d{2})?\s*(am|pm)?", s)
    if not m or (m.group(2) is None and m.group(3) is None):
        return None
    hour, minute = int(m.group(1)), int(m.group(2) or 0)
    if m.group(3) == "pm" and hour < 12:
        hour += 12
    if m.group(3) == "am" and hour == 12:
        hour = 0
    return hour * 60 + minute if hour < 24 and minute < 60 else None


def digits(value: Any) -> str:
    return re.sub(r"\D", "", str(value))


def arg_matches(name: str, expected: str, got: Any) -> bool:
    if got is None:
        return False
    if name.endswith("_id"):
        return digits(got) == expected  # the tools keep digits only before calling the CRM
    if name == "date":
        try:
            return dt.date.fromisoformat(str(got).strip()[:10]).isoformat() == expected
        except ValueError:
            return False
    if name == "time":
        return parse_time(got) is not None and parse_time(got) == parse_time(expected)
    return str(got).strip().lower() == expected.lower()


def args_match(expected: dict[str, str], got: dict[str, Any]) -> bool:
    return all(arg_matches(k, v, got.get(k)) for k, v in expected.items())


# -- word error rate ------------------------------------------------------------------------------
_NUMBER_WORDS = {w: str(i) for w, i in _UNITS.items() if i < 10} | {"oh": "0"}


def normalize_words(text: str) -> list[str]:
    """Lower-case words; digits one per token on both sides ("4567", "4,567", "four five six
    seven" and "4 5 6 7" compare equal; "10:30" equals "10 30"); "2nd" -> "2"; "p.m." -> "pm";
    hyphens split words ("check-up" = "check up")."""
    t = text.lower().replace("-", " ")
    t = re.sub(r"\b([ap])\.\s?m\.?", r"\1m", t)
    t = re.sub(r"(?<=\d),(?=\d{3})", "", t)
    t = re.sub(r"\b(\d+)(st|nd|rd|th)\b", r"\1", t)
    out: list[str] = []
    for tok in re.findall(r"[a-z']+|\d+", t):
        tok = _NUMBER_WORDS.get(tok, tok)
        out.extend(list(tok) if tok.isdigit() else [tok.strip("'")])
    return [w for w in out if w]


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word-level Levenshtein distance, reference length) after `normalize_words`."""
    ref, hyp = normalize_words(reference), normalize_words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1], len(ref)


# -- cases ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One scripted phone call.

    `turns`: what the caller says, one string per turn (each becomes a Piper WAV).
    `tool`/`args`: the call that must happen (None: no tool at all), with the arguments that
    must match (`arg_matches`); `reason` is never checked.
    `answer`: how the last spoken reply is judged — "date" (names `date`), "date_or_time"
    (names `date` or one of the free times the tool returned), "no_upcoming" (says there is
    none and names no date), "text" (any non-empty reply that is not callroom's apology).
    `crm`: the diary change the call must cause — ("booked", patient, date, time),
    ("cancelled", appointment id) or ("unchanged",).
    `control`: what the control LLM does per caller turn: a text reply or (tool, args).
    """

    id: str
    kind: str
    turns: tuple[str, ...]
    tool: str | None
    args: dict[str, str]
    answer: str
    date: dt.date | None
    crm: tuple[Any, ...]
    control: tuple[str | tuple[str, dict[str, str]], ...]
    note: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)


def build_cases(today: dt.date, seed: dt.date) -> list[Case]:
    """The calls, in the order they run (one fresh CRM per backend; order matters: the
    cancellation of 1007 comes after the lookup of its patient)."""
    appts = seeded_appointments(seed)

    def appt_date(aid: int) -> dt.date:
        return appts[aid]["date"]

    book_a = nth_weekday(today, 5)  # never a seeded slot at 14:00 / 10:30 (see module test)
    book_b = nth_weekday(today, 7)
    slots_a = nth_weekday(today, 9)
    slots_b = nth_weekday(today, 6)

    def lookup(cid: str, say: str, pid: str, aid: int, **kw: Any) -> Case:
        return Case(
            cid,
            "lookup",
            (say,),
            "next_appointment",
            {"patient_id": pid},
            "date",
            appt_date(aid),
            ("unchanged",),
            (("next_appointment", {"patient_id": pid}),),
            **kw,
        )

    cases = [
        lookup(
            "next-4567", "Hi, when is my next appointment? My patient ID is 4567.", "4567", 1001
        ),
        lookup(
            "next-1234-digits",
            "Hello, this is James. My patient ID is one two three four. When am I coming in next?",
            "1234",
            1002,
        ),
        lookup(
            "next-2040",
            "Can you tell me when my next visit is? I'm patient number 2040.",
            "2040",
            1004,
        ),
        Case(
            "next-3318-none",
            "no_upcoming",
            ("Hi, I'm patient 3318. Do I have an appointment coming up?",),
            "next_appointment",
            {"patient_id": "3318"},
            "no_upcoming",
            None,
            ("unchanged",),
            (("next_appointment", {"patient_id": "3318"}),),
            note="Tom Becker has only a past visit",
        ),
        Case(
            "next-5821-two-turns",
            "lookup",
            ("When is my next appointment?", "My patient ID is five eight two one."),
            "next_appointment",
            {"patient_id": "5821"},
            "date",
            appt_date(1006),
            ("unchanged",),
            ("Sure, what is your patient ID?", ("next_appointment", {"patient_id": "5821"})),
            note="ID only in the second turn",
        ),
        lookup(
            "next-7702",
            "This is Daniel O'Connor, patient 7702. When is my appointment?",
            "7702",
            1007,
        ),
        Case(
            "slots-" + slots_a.isoformat(),
            "slots",
            (f"What times do you have free on {said_date(slots_a)}?",),
            "free_slots",
            {"date": slots_a.isoformat()},
            "date_or_time",
            slots_a,
            ("unchanged",),
            (("free_slots", {"date": slots_a.isoformat()}),),
        ),
        Case(
            "slots-" + slots_b.isoformat(),
            "slots",
            (f"Do you have any openings on {said_date(slots_b)}?",),
            "free_slots",
            {"date": slots_b.isoformat()},
            "date_or_time",
            slots_b,
            ("unchanged",),
            (("free_slots", {"date": slots_b.isoformat()}),),
        ),
        Case(
            "book-2040",
            "book",
            (
                f"I'd like to book a check-up on {said_date(book_a)} at 2 PM. "
                "My patient ID is 2040.",
            ),
            "book_appointment",
            {"patient_id": "2040", "date": book_a.isoformat(), "time": "14:00"},
            "date",
            book_a,
            ("booked", "2040", book_a.isoformat(), "14:00"),
            (
                (
                    "book_appointment",
                    {
                        "patient_id": "2040",
                        "date": book_a.isoformat(),
                        "time": "14:00",
                        "reason": "check-up",
                    },
                ),
            ),
        ),
        Case(
            "book-5821",
            "book",
            (
                f"Could you book me in for {said_date(book_b)} at 10:30 in the morning? "
                "I'm patient 5821.",
            ),
            "book_appointment",
            {"patient_id": "5821", "date": book_b.isoformat(), "time": "10:30"},
            "date",
            book_b,
            ("booked", "5821", book_b.isoformat(), "10:30"),
            (
                (
                    "book_appointment",
                    {"patient_id": "5821", "date": book_b.isoformat(), "time": "10:30"},
                ),
            ),
        ),
        Case(
            "cancel-1007",
            "cancel",
            ("Please cancel appointment number 1007.",),
            "cancel_appointment",
            {"appointment_id": "1007"},
            "date",
            appt_date(1007),
            ("cancelled", 1007),
            (("cancel_appointment", {"appointment_id": "1007"}),),
        ),
        Case(
            "cancel-1003-digits",
            "cancel",
            ("I need to cancel an appointment. The appointment ID is one zero zero three.",),
            "cancel_appointment",
            {"appointment_id": "1003"},
            "date",
            appt_date(1003),
            ("cancelled", 1003),
            (("cancel_appointment", {"appointment_id": "1003"}),),
        ),
        Case(
            "chat-hours",
            "chat",
            ("What are your opening hours?",),
            None,
            {},
            "text",
            None,
            ("unchanged",),
            ("We're open Monday to Friday, from nine to five.",),
        ),
        Case(
            "chat-parking",
            "chat",
            ("Is there somewhere to park near the clinic?",),
            None,
            {},
            "text",
            None,
            ("unchanged",),
            ("Yes, there is free parking behind the building.",),
        ),
    ]
    return cases


# -- scoring --------------------------------------------------------------------------------------
def tool_calls_of(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every tool call in the stored history, in order, with its parsed arguments and result."""
    results = {m.get("tool_call_id"): m.get("content") for m in history if m.get("role") == "tool"}
    calls = []
    for m in history:
        if m.get("role") != "assistant":
            continue
        for tc in m.get("tool_calls") or ():
            fn = tc.get("function") or {}
            raw = fn.get("arguments") or "{}"
            try:
                args = json.loads(raw) if isinstance(raw, str) else dict(raw)
            except ValueError:
                args = {"_unparsed": raw}
            content = results.get(tc.get("id"))
            try:
                result = json.loads(content) if isinstance(content, str) else content
            except ValueError:
                result = content
            calls.append({"name": fn.get("name"), "arguments": args, "result": result})
    return calls


def free_times_in(calls: list[dict[str, Any]]) -> list[str]:
    times: list[str] = []
    for c in calls:
        r = c.get("result")
        if c["name"] == "free_slots" and isinstance(r, dict):
            times += [s.get("time") for s in r.get("slots") or () if isinstance(s, dict)]
    return [t for t in times if t]


def time_mentioned(text: str, hhmm: str) -> bool:
    """ "09:30" in "9:30", "half past nine", "nine thirty"? Only digit forms: 9:30, 09:30,
    9.30, 9 am / 9 o'clock for whole hours, and 12-hour "2:30 pm"/"2:30"."""
    h, m = int(hhmm[:2]), int(hhmm[3:])
    t = text.lower()
    hours = {h, h % 12 or 12}
    for hh in hours:
        if re.search(rf"\b0?{hh}[:.]{m:02d}\b", t):
            return True
        if m == 0 and re.search(rf"\b{hh}\s*(?:am|pm|a\.m\.|p\.m\.|o'clock)", t):
            return True
    return False


NO_UPCOMING = (
    r"\bno (?:upcoming |future |other |more |booked |scheduled )?(?:appointments?|visits?)\b"
    r"|\b(?:don't|do not|doesn't|does not) (?:currently )?have (?:any |an )?(?:upcoming |future "
    r"|other |more )?(?:appointments?|visits?)\b"
    r"|\bnothing (?:booked|scheduled|coming up)\b"
    r"|\bnot (?:booked|scheduled) (?:in|for)\b"
)
"""Says there is no upcoming appointment ("no upcoming appointment", "you don't have any
appointments", "nothing booked"); a refusal such as "I don't have access" does not count."""


def judge_answer(case: Case, answer: str, calls: list[dict[str, Any]]) -> tuple[bool, str]:
    """(ok, how): the last spoken reply against `case.answer`."""
    text = answer.strip()
    if not text:
        return False, "no reply"
    if text.lower().startswith(APOLOGY_PREFIX):
        return False, "callroom apology (turn failed)"
    if case.answer == "text":
        return True, "reply"
    if case.answer == "no_upcoming":
        negative = re.search(NO_UPCOMING, text.lower().replace("’", "'"))
        if mentions_any_date(text):
            return False, "names a date"
        return (True, "says none") if negative else (False, "no 'none' in reply")
    assert case.date is not None
    form = date_mention(text, case.date)
    if form:
        return True, form
    if case.answer == "date_or_time":
        for t in free_times_in(calls):
            if time_mentioned(text, t):
                return True, f"free time {t}"
    return False, "date missing"


def judge_crm(
    case: Case, before: dict[int, dict[str, Any]], after: dict[int, dict[str, Any]]
) -> tuple[bool, str]:
    """The diary change against `case.crm` (rows: id -> patient_id, date, time, status)."""
    new = {k: v for k, v in after.items() if k not in before}
    changed = {k: v for k, v in after.items() if k in before and before[k]["status"] != v["status"]}
    kind = case.crm[0]
    if kind == "unchanged":
        ok = not new and not changed
        return ok, "unchanged" if ok else f"changed: new {list(new)}, status {list(changed)}"
    if kind == "booked":
        _, pid, day, hhmm = case.crm
        hits = [
            k
            for k, v in new.items()
            if v["patient_id"] == pid
            and v["date"] == day
            and v["time"] == hhmm
            and v["status"] == "booked"
        ]
        ok = bool(hits) and not changed and len(new) == len(hits)
        return ok, f"booked {hits}" if ok else f"new {new}, status changes {list(changed)}"
    if kind == "cancelled":
        aid = case.crm[1]
        ok = (
            aid in changed
            and after[aid]["status"] == "cancelled"
            and not new
            and (len(changed) == 1)
        )
        return ok, f"{aid} cancelled" if ok else f"new {list(new)}, status changes {changed}"
    raise ValueError(kind)


def call_text(name: str, arguments: dict[str, Any]) -> str:
    return f"{name}({', '.join(f'{k}={v}' for k, v in arguments.items())})"


def judge_tool(case: Case, calls: list[dict[str, Any]]) -> tuple[bool, bool, str]:
    """(right tool, right arguments, what was called). Right tool: the expected tool was
    called and no other booking/cancelling tool was (look-ups before acting are allowed);
    for a no-tool case, no call at all. Right arguments: one call of that tool had them."""
    names = [c["name"] for c in calls]
    shown = "; ".join(call_text(c["name"], c["arguments"]) for c in calls) or "—"
    if case.tool is None:
        return not calls, not calls, shown
    wrong = [n for n in names if n in MUTATING_TOOLS and n != case.tool]
    tool_ok = case.tool in names and not wrong
    args_ok = tool_ok and any(
        c["name"] == case.tool and args_match(case.args, c["arguments"]) for c in calls
    )
    return tool_ok, args_ok, shown


def _self_check() -> None:
    d = dt.date(2026, 12, 2)
    assert date_mention("It's on Wednesday, December 2 at 2 PM.", d) == "month-day"
    assert date_mention("on December the second", d) == "month-day"
    assert date_mention("on the 2nd of December", d) == "month-day"
    assert date_mention("2026-12-02", d) == "iso"
    assert date_mention("see you Wednesday", d) == "weekday"
    assert date_mention("December 21", d) is None
    assert date_mention("Dec. 2nd", d) == "month-day"
    assert date_mention("December twenty-first", dt.date(2026, 12, 21)) == "month-day"
    assert parse_time("2 PM") == parse_time("14:00") == parse_time("14:00:00") == 840
    assert parse_time("2:00") == 120 and parse_time("2") is None
    assert word_errors("My patient ID is 4567.", "My patient ID is 4,567.")[0] == 0
    assert word_errors("at 10:30 in the morning", "at 10 30 in the morning")[0] == 0
    assert word_errors("one zero zero three", "1003")[0] == 0
    assert word_errors("on Tuesday, December 8th", "on Tuesday, December 8")[0] == 0
    assert word_errors("at 2 PM", "at 2 p.m.")[0] == 0
    assert time_mentioned("we have 9:30 and 11 am", "09:30")
    assert time_mentioned("2:30 pm works", "14:30") and not time_mentioned("12:30", "14:30")
    none = Case(
        "x", "no_upcoming", ("",), "next_appointment", {}, "no_upcoming", None, ("unchanged",), ()
    )
    assert judge_answer(none, "Tom Becker has no upcoming appointment.", [])[0]
    assert judge_answer(none, "You don't have any appointments booked right now.", [])[0]
    assert not judge_answer(none, "Sorry, I don't have access to patient records.", [])[0]
    assert not judge_answer(none, "You have no appointment until Friday.", [])[0]
    # the booked slots never collide with the seeded diary, whatever today is
    for n in range(14):
        today = dt.date(2026, 11, 23) + dt.timedelta(days=n)
        seed = seed_date_for(today)
        taken = {(a["date"], a["time"]) for a in seeded_appointments(seed).values()}
        assert (nth_weekday(today, 5), "14:00") not in taken
        assert (nth_weekday(today, 7), "10:30") not in taken
        assert nth_weekday(today, 9) <= today + dt.timedelta(days=14)


if __name__ == "__main__":
    _self_check()
    today = dt.date.today()
    for c in build_cases(today, seed_date_for(today)):
        print(f"{c.id:24s} {c.tool or '-':20s} {c.args} {c.date} | {' / '.join(c.turns)}")
