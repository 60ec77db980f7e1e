"""Bright Smile Dental's CRM: patients, appointments and free slots over a bearer-token JSON API.

The receptionist demo's tools call this service, so its answers are shaped for a voice agent:
every appointment carries its weekday (models get weekdays wrong when left to work them out),
errors carry a sentence the agent can relay, and a refused booking lists nearby free times.

Run it with `python -m examples.crm.app --port 8790 --db data/crm.sqlite` (or
`python examples/crm/app.py --port 8790`). The token comes from `CRM_TOKEN`.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
import re
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("crm")

DEFAULT_TOKEN = "demo-crm-token"
DEFAULT_PORT = 8790
DEFAULT_DB = Path("data") / "crm.sqlite"

CLINIC_NAME = "Bright Smile Dental"
# Half-hour appointments; the last one starts at 16:30 so the day ends at 17:00.
SLOT_TIMES: tuple[str, ...] = tuple(f"{h:02d}:{m:02d}" for h in range(9, 17) for m in (0, 30))
BOOKING_WINDOW_DAYS = 14
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
# One chair, one dentist a day: so a slot is just (date, time) and a booking needs no dentist.
DENTIST_BY_WEEKDAY = {
    0: "Dr. Maya Okafor",
    1: "Dr. Lukas Brandt",
    2: "Dr. Maya Okafor",
    3: "Dr. Lukas Brandt",
    4: "Dr. Maya Okafor",
}
MAX_REASON_CHARS = 200
# Sequence start, so appointment ids are four digits like patient ids and never look like 1, 2.
FIRST_APPOINTMENT_ID = 1001


@dataclass(frozen=True)
class SeedPatient:
    id: str
    name: str
    phone: str


@dataclass(frozen=True)
class SeedAppointment:
    """`weekday_offset` counts weekdays from the seed date (negative: in the past), so the seeded
    diary always lands on open days and inside the booking window whatever the seed date."""

    patient_id: str
    weekday_offset: int
    time: str
    reason: str


# 555-01xx numbers are reserved for fiction, so the demo can never dial a real person.
SEED_PATIENTS: tuple[SeedPatient, ...] = (
    SeedPatient("4567", "Maria Gonzalez", "+1-555-0142"),
    SeedPatient("1234", "James Whitaker", "+1-555-0117"),
    SeedPatient("2040", "Aisha Rahman", "+1-555-0163"),
    SeedPatient("3318", "Tom Becker", "+1-555-0108"),
    SeedPatient("5821", "Priya Natarajan", "+1-555-0190"),
    SeedPatient("7702", "Daniel O'Connor", "+1-555-0125"),
)

# Inserted in this order, so their ids are 1001, 1002, … Tom Becker (3318) only has a past visit:
# he is the patient with no upcoming appointment.
SEED_APPOINTMENTS: tuple[SeedAppointment, ...] = (
    SeedAppointment("4567", 2, "10:30", "routine check-up and cleaning"),
    SeedAppointment("1234", 1, "09:00", "filling, lower left molar"),
    SeedAppointment("1234", 8, "14:00", "follow-up after filling"),
    SeedAppointment("2040", 4, "15:30", "crown fitting"),
    SeedAppointment("3318", -3, "11:00", "routine check-up and cleaning"),
    SeedAppointment("5821", 6, "11:00", "wisdom tooth consultation"),
    SeedAppointment("7702", 10, "09:30", "teeth whitening"),
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS patients (
    id    TEXT PRIMARY KEY,
    name  TEXT NOT NULL,
    phone TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS appointments (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    patient_id   TEXT NOT NULL REFERENCES patients(id),
    date         TEXT NOT NULL,
    time         TEXT NOT NULL,
    dentist      TEXT NOT NULL,
    reason       TEXT NOT NULL,
    status       TEXT NOT NULL DEFAULT 'booked' CHECK (status IN ('booked', 'cancelled')),
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')),
    cancelled_at TEXT
);
-- The database, not a read-then-write in Python, decides who gets a contested slot.
CREATE UNIQUE INDEX IF NOT EXISTS one_booking_per_slot
    ON appointments(date, time) WHERE status = 'booked';
"""

_DATE_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_TIME_RE = re.compile(r"^([0-9]{1,2}):([0-9]{2})$")
_PATIENT_ID_RE = re.compile(r"^[0-9]{1,12}$")


def nth_weekday(start: date, n: int) -> date:
    """The n-th Monday-to-Friday day after `start` (before it when n < 0); `start` itself for 0."""
    day, step, left = start, (1 if n > 0 else -1), abs(n)
    while left:
        day += timedelta(days=step)
        if day.weekday() < 5:
            left -= 1
    return day


class SlotTaken(Exception):
    """Raised when the unique index refuses a booking: someone else holds that slot."""


class Clinic:
    """The clinic's diary in one SQLite file.

    One connection guarded by a lock: the service is tiny and every query is sub-millisecond,
    so serialising them is simpler than pooling and cannot deadlock the event loop.
    """

    def __init__(self, db_path: Path | str, today: Callable[[], date] = date.today) -> None:
        self.db_path = str(db_path)
        self.today = today
        if self.db_path != ":memory:":
            Path(self.db_path).parent.mkdir(parents=True, exist_ok=True)
        # Autocommit; multi-statement writes use explicit BEGIN IMMEDIATE in `_tx`.
        self._conn = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA foreign_keys = ON")
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # -- set-up ---------------------------------------------------------------------------
    def init(self, seed_date: date | None = None) -> bool:
        """Create the schema and, only if there are no patients yet, seed the demo data.

        Returns whether it seeded. An existing diary is never reseeded, so bookings made in
        an earlier run survive a restart.
        """
        with self._lock:
            self._conn.executescript(SCHEMA)
        with self._tx() as conn:
            if conn.execute("SELECT 1 FROM patients LIMIT 1").fetchone():
                return False
            start = seed_date or self.today()
            conn.execute(
                "INSERT OR REPLACE INTO sqlite_sequence(name, seq) VALUES ('appointments', ?)",
                (FIRST_APPOINTMENT_ID - 1,),
            )
            conn.executemany(
                "INSERT INTO patients(id, name, phone) VALUES (?, ?, ?)",
                [(p.id, p.name, p.phone) for p in SEED_PATIENTS],
            )
            for a in SEED_APPOINTMENTS:
                day = nth_weekday(start, a.weekday_offset)
                conn.execute(
                    "INSERT INTO appointments(patient_id, date, time, dentist, reason)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (a.patient_id, day.isoformat(), a.time, dentist_on(day) or "", a.reason),
                )
            return True

    # -- reads ----------------------------------------------------------------------------
    def window(self) -> tuple[date, date]:
        """First and last bookable day: tomorrow through two weeks out, recomputed each call
        so a long-running server keeps offering the next fortnight."""
        today = self.today()
        return today + timedelta(days=1), today + timedelta(days=BOOKING_WINDOW_DAYS)

    def patient(self, patient_id: str) -> dict[str, Any] | None:
        rows = self._query("SELECT id, name, phone FROM patients WHERE id = ?", (patient_id,))
        return dict(rows[0]) if rows else None

    def appointment(self, appointment_id: int) -> dict[str, Any] | None:
        rows = self._query(_APPOINTMENT_SELECT + " WHERE a.id = ?", (appointment_id,))
        return appointment_json(rows[0]) if rows else None

    def upcoming(self, patient_id: str) -> list[dict[str, Any]]:
        """Booked appointments from today on, soonest first (today's count as upcoming)."""
        rows = self._query(
            _APPOINTMENT_SELECT + " WHERE a.patient_id = ? AND a.status = 'booked' AND a.date >= ?"
            " ORDER BY a.date, a.time",
            (patient_id, self.today().isoformat()),
        )
        return [appointment_json(r) for r in rows]

    def free_times(self, day: date) -> list[str]:
        """Open times on `day`; empty when it is outside the window or the clinic is shut."""
        first, last = self.window()
        if not (first <= day <= last) or dentist_on(day) is None:
            return []
        taken = {
            r["time"]
            for r in self._query(
                "SELECT time FROM appointments WHERE date = ? AND status = 'booked'",
                (day.isoformat(),),
            )
        }
        return [t for t in SLOT_TIMES if t not in taken]

    # -- writes ---------------------------------------------------------------------------
    def book(self, patient_id: str, day: date, time: str, reason: str) -> dict[str, Any]:
        try:
            with self._tx() as conn:
                cur = conn.execute(
                    "INSERT INTO appointments(patient_id, date, time, dentist, reason)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (patient_id, day.isoformat(), time, dentist_on(day) or "", reason),
                )
                new_id = cur.lastrowid
        except sqlite3.IntegrityError as exc:
            raise SlotTaken from exc
        assert new_id is not None
        booked = self.appointment(new_id)
        assert booked is not None
        return booked

    def cancel(self, appointment_id: int) -> dict[str, Any] | None:
        """Cancel and return the appointment; cancelling twice is a no-op, not an error, so a
        retried tool call cannot confuse the caller."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE appointments SET status = 'cancelled',"
                " cancelled_at = strftime('%Y-%m-%dT%H:%M:%SZ', 'now')"
                " WHERE id = ? AND status = 'booked'",
                (appointment_id,),
            )
        return self.appointment(appointment_id)


_APPOINTMENT_SELECT = (
    "SELECT a.id, a.patient_id, p.name AS patient_name, a.date, a.time, a.dentist, a.reason,"
    " a.status FROM appointments a JOIN patients p ON p.id = a.patient_id"
)


def dentist_on(day: date) -> str | None:
    """Who works that day; None at weekends, when the clinic is closed."""
    return DENTIST_BY_WEEKDAY.get(day.weekday())


def appointment_json(row: sqlite3.Row) -> dict[str, Any]:
    day = date.fromisoformat(row["date"])
    return {
        "id": str(row["id"]),
        "patient_id": row["patient_id"],
        "patient_name": row["patient_name"],
        "date": row["date"],
        "weekday": WEEKDAYS[day.weekday()],
        "time": row["time"],
        "dentist": row["dentist"],
        "reason": row["reason"],
        "status": row["status"],
    }


def slot_json(day: date, time: str) -> dict[str, Any]:
    return {
        "date": day.isoformat(),
        "weekday": WEEKDAYS[day.weekday()],
        "time": time,
        "dentist": dentist_on(day),
    }


def error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    """Every error has the same shape so a tool can always relay `message` to the caller."""
    return JSONResponse({"error": code, "message": message, **extra}, status_code=status)


def parse_date(value: Any) -> date | None:
    """Strict YYYY-MM-DD: `date.fromisoformat` alone would also take 20300107 and week dates."""
    if not isinstance(value, str) or not _DATE_RE.match(value):
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def parse_time(value: Any) -> str | None:
    """HH:MM (or H:MM, which models sometimes send), normalised to HH:MM."""
    if not isinstance(value, str) or not (m := _TIME_RE.match(value.strip())):
        return None
    hour, minute = int(m.group(1)), int(m.group(2))
    if hour > 23 or minute > 59:
        return None
    return f"{hour:02d}:{minute:02d}"


def _parse_appointment_id(raw: str) -> int | None:
    # isascii: str.isdigit() also accepts "²", which int() then refuses.
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 12 else None


def _nearest(times: list[str], wanted: str, n: int = 3) -> list[str]:
    """The n free times closest to the one asked for, in clock order, to offer instead."""

    def minutes(t: str) -> int:
        return int(t[:2]) * 60 + int(t[3:])

    return sorted(sorted(times, key=lambda t: abs(minutes(t) - minutes(wanted)))[:n])


# -- HTTP -----------------------------------------------------------------------------------
class BearerAuth:
    """Refuses any request without `Authorization: Bearer <token>` before routing, so unknown
    paths do not reveal which routes exist. The token is compared in constant time and never
    logged or echoed."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = Headers(scope=scope).get("authorization", "")
        scheme, _, credentials = header.strip().partition(" ")
        presented = credentials.strip().encode("utf-8", "surrogateescape")
        if scheme.lower() == "bearer" and hmac.compare_digest(presented, self._token):
            await self.app(scope, receive, send)
            return
        # RFC 6750: no error attribute when no credentials were sent at all.
        challenge = 'Bearer realm="crm"' + (', error="invalid_token"' if header else "")
        message = "The bearer token is wrong." if header else "Send Authorization: Bearer <token>."
        response = error(401, "unauthorized", message)
        response.headers["WWW-Authenticate"] = challenge
        await response(scope, receive, send)


def create_app(
    db_path: Path | str,
    token: str,
    *,
    seed_date: date | None = None,
    today: Callable[[], date] = date.today,
) -> Starlette:
    """The CRM as an ASGI app. The database is created and seeded here rather than in a
    lifespan hook, so ASGI test transports that skip lifespan still see a ready diary.

    `seed_date` anchors the seeded appointments (default: today); `today` is the clock used for
    "upcoming" and the booking window, injectable so tests do not depend on the calendar.
    """
    if not token:
        raise ValueError("the CRM needs a non-empty token: an empty one would match anything")
    clinic = Clinic(db_path, today)
    clinic.init(seed_date)

    def unknown_patient(patient_id: str) -> JSONResponse:
        return error(404, "patient_not_found", f"There is no patient with id {patient_id}.")

    async def get_patient(request: Request) -> Response:
        patient_id = request.path_params["patient_id"]
        patient = clinic.patient(patient_id)
        return JSONResponse(patient) if patient else unknown_patient(patient_id)

    async def next_appointment(request: Request) -> Response:
        patient_id = request.path_params["patient_id"]
        patient = clinic.patient(patient_id)
        if not patient:
            return unknown_patient(patient_id)
        upcoming = clinic.upcoming(patient_id)
        if not upcoming:
            return error(
                404,
                "no_upcoming_appointment",
                f"{patient['name']} has no upcoming appointment.",
                patient_id=patient_id,
            )
        return JSONResponse(upcoming[0])

    async def list_appointments(request: Request) -> Response:
        patient_id = request.path_params["patient_id"]
        if not clinic.patient(patient_id):
            return unknown_patient(patient_id)
        return JSONResponse({"patient_id": patient_id, "appointments": clinic.upcoming(patient_id)})

    async def slots(request: Request) -> Response:
        first, last = clinic.window()
        raw = request.query_params.get("date")
        if raw is None:
            days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
            free = [slot_json(d, t) for d in days for t in clinic.free_times(d)]
            return JSONResponse(
                {"date": None, "from": first.isoformat(), "to": last.isoformat(), "slots": free}
            )
        day = parse_date(raw)
        if day is None:
            return error(422, "invalid_date", f"date must be YYYY-MM-DD, got {raw!r}.")
        note = None
        if dentist_on(day) is None:
            note = f"The clinic is closed on {WEEKDAYS[day.weekday()]}s."
        elif not first <= day <= last:
            note = f"Bookings are open from {first.isoformat()} to {last.isoformat()}."
        elif not clinic.free_times(day):
            note = f"{day.isoformat()} is fully booked."
        return JSONResponse(
            {
                "date": day.isoformat(),
                "weekday": WEEKDAYS[day.weekday()],
                "dentist": dentist_on(day),
                "slots": [slot_json(day, t) for t in clinic.free_times(day)],
                "note": note,
            }
        )

    async def book(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            return error(
                422,
                "invalid_request",
                'The body must be a JSON object: {"patient_id", "date", "time", "reason"}.',
            )
        problems: dict[str, str] = {}
        raw_patient = body.get("patient_id")
        if isinstance(raw_patient, int) and not isinstance(raw_patient, bool):
            raw_patient = str(raw_patient)
        if not isinstance(raw_patient, str) or not _PATIENT_ID_RE.match(raw_patient.strip()):
            problems["patient_id"] = 'patient_id must be the patient\'s digits, e.g. "4567"'
        day = parse_date(body.get("date"))
        if day is None:
            problems["date"] = 'date must be YYYY-MM-DD, e.g. "2030-01-07"'
        time = parse_time(body.get("time"))
        if time is None:
            problems["time"] = 'time must be HH:MM on a 24-hour clock, e.g. "14:30"'
        reason = body.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            problems["reason"] = 'reason must be a short non-empty text, e.g. "cleaning"'
        elif len(reason) > MAX_REASON_CHARS:
            problems["reason"] = f"reason must be at most {MAX_REASON_CHARS} characters"
        if problems:
            return error(
                422, "invalid_request", "; ".join(problems.values()) + ".", fields=problems
            )
        assert isinstance(raw_patient, str) and day is not None and time is not None
        assert isinstance(reason, str)
        patient_id = raw_patient.strip()
        if not clinic.patient(patient_id):
            return unknown_patient(patient_id)

        first, last = clinic.window()
        if dentist_on(day) is None:
            return error(
                422,
                "clinic_closed",
                f"The clinic is closed on {WEEKDAYS[day.weekday()]}s; "
                "appointments are Monday to Friday.",
            )
        if not first <= day <= last:
            return error(
                422,
                "outside_booking_window",
                f"Bookings are open from {first.isoformat()} to {last.isoformat()}.",
            )
        if time not in SLOT_TIMES:
            return error(
                422,
                "not_a_slot",
                f"Appointments start on the hour or half hour from {SLOT_TIMES[0]} "
                f"to {SLOT_TIMES[-1]}.",
            )
        try:
            booked = clinic.book(patient_id, day, time, reason.strip())
        except SlotTaken:
            return error(
                409,
                "slot_taken",
                f"{day.isoformat()} at {time} is already taken.",
                alternatives=[slot_json(day, t) for t in _nearest(clinic.free_times(day), time)],
            )
        log.info("booked appointment %s for patient %s", booked["id"], patient_id)
        return JSONResponse(
            booked, status_code=201, headers={"Location": f"/appointments/{booked['id']}"}
        )

    def unknown_appointment(raw: str) -> JSONResponse:
        return error(404, "appointment_not_found", f"There is no appointment with id {raw}.")

    async def get_appointment(request: Request) -> Response:
        raw = request.path_params["appointment_id"]
        found = (aid := _parse_appointment_id(raw)) is not None and clinic.appointment(aid)
        return JSONResponse(found) if found else unknown_appointment(raw)

    async def cancel(request: Request) -> Response:
        raw = request.path_params["appointment_id"]
        aid = _parse_appointment_id(raw)
        cancelled = clinic.cancel(aid) if aid is not None else None
        if cancelled is None:
            return unknown_appointment(raw)
        log.info("cancelled appointment %s", cancelled["id"])
        return JSONResponse(cancelled)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        response = error(exc.status_code, "http_error", exc.detail)
        response.headers.update(exc.headers or {})  # keeps 405's Allow
        return response

    routes = [
        Route("/patients/{patient_id}", get_patient, methods=["GET"]),
        Route("/patients/{patient_id}/next-appointment", next_appointment, methods=["GET"]),
        Route("/patients/{patient_id}/appointments", list_appointments, methods=["GET"]),
        Route("/slots", slots, methods=["GET"]),
        Route("/appointments", book, methods=["POST"]),
        Route("/appointments/{appointment_id}", get_appointment, methods=["GET"]),
        Route("/appointments/{appointment_id}", cancel, methods=["DELETE"]),
        Route("/appointments/{appointment_id}/cancel", cancel, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(BearerAuth, token=token)],
        exception_handlers={HTTPException: http_error},
    )
    app.state.clinic = clinic
    return app


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description=f"{CLINIC_NAME} CRM (token from CRM_TOKEN)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--db", type=Path, default=DEFAULT_DB, help="SQLite file (created)")
    parser.add_argument(
        "--seed-date",
        type=date.fromisoformat,
        default=None,
        help="anchor the seeded diary on this YYYY-MM-DD (default: today); new databases only",
    )
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    token = os.environ.get("CRM_TOKEN") or DEFAULT_TOKEN
    if token == DEFAULT_TOKEN:
        log.warning("using the built-in demo token (CRM_TOKEN unset or default): demo use only")
    app = create_app(args.db, token, seed_date=args.seed_date)
    log.info("%s CRM on http://%s:%d, database %s", CLINIC_NAME, args.host, args.port, args.db)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower())
    return 0


if __name__ == "__main__":
    sys.exit(main())
