"""The demo CRM (examples/crm/app.py): auth, lookups, booking, cancelling, validation.

The clock is pinned (`today=`) so the seeded diary and the booking window are the same on any
calendar day; most tests go through ASGITransport, one over real loopback HTTP.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from examples.crm.app import SLOT_TIMES, create_app, nth_weekday

TOKEN = "test-crm-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SEED = date(2030, 1, 7)  # a Monday; the booking window is 2030-01-08 .. 2030-01-21


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_app(db: Path) -> Any:
    return create_app(db, TOKEN, seed_date=SEED, today=lambda: SEED)


@pytest.fixture
async def crm(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app(tmp_path / "crm.sqlite"))
    async with httpx.AsyncClient(transport=transport, base_url="http://crm", headers=AUTH) as c:
        yield c


# -- auth -----------------------------------------------------------------------------------
ROUTES = [
    ("GET", "/patients/4567"),
    ("GET", "/patients/4567/next-appointment"),
    ("GET", "/slots?date=2030-01-08"),
    ("POST", "/appointments"),
    ("DELETE", "/appointments/1001"),
    ("POST", "/appointments/1001/cancel"),
    ("GET", "/no-such-route"),
]


@pytest.mark.parametrize(("method", "url"), ROUTES)
async def test_missing_token_is_401_with_challenge(
    crm: httpx.AsyncClient, method: str, url: str
) -> None:
    r = await crm.request(method, url, headers={"Authorization": ""})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="crm"'
    assert r.json()["error"] == "unauthorized"


@pytest.mark.parametrize(
    "header",
    ["Bearer wrong-token", f"Bearer {TOKEN}x", f"Basic {TOKEN}", "Bearer", TOKEN],
)
async def test_wrong_token_is_401(crm: httpx.AsyncClient, header: str) -> None:
    r = await crm.get("/patients/4567", headers={"Authorization": header})
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer ")
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    assert TOKEN not in r.text


async def test_wrong_token_changes_nothing(crm: httpx.AsyncClient) -> None:
    r = await crm.delete("/appointments/1001", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    assert (await crm.get("/appointments/1001")).json()["status"] == "booked"


async def test_scheme_is_case_insensitive(crm: httpx.AsyncClient) -> None:
    r = await crm.get("/patients/4567", headers={"Authorization": f"bearer {TOKEN}"})
    assert r.status_code == 200


def test_empty_token_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        create_app(tmp_path / "crm.sqlite", "")


# -- lookups --------------------------------------------------------------------------------
async def test_patient_lookup(crm: httpx.AsyncClient) -> None:
    r = await crm.get("/patients/4567")
    assert r.status_code == 200
    assert r.json() == {"id": "4567", "name": "Maria Gonzalez", "phone": "+1-555-0142"}


@pytest.mark.parametrize(
    "url", ["/patients/9999", "/patients/9999/next-appointment", "/patients/9999/appointments"]
)
async def test_unknown_patient_is_404(crm: httpx.AsyncClient, url: str) -> None:
    r = await crm.get(url)
    assert r.status_code == 404
    assert r.json()["error"] == "patient_not_found"
    assert "9999" in r.json()["message"]


async def test_next_appointment(crm: httpx.AsyncClient) -> None:
    r = await crm.get("/patients/4567/next-appointment")
    assert r.status_code == 200
    assert r.json() == {
        "id": "1001",
        "patient_id": "4567",
        "patient_name": "Maria Gonzalez",
        "date": "2030-01-09",
        "weekday": "Wednesday",
        "time": "10:30",
        "dentist": "Dr. Maya Okafor",
        "reason": "routine check-up and cleaning",
        "status": "booked",
    }


async def test_next_appointment_is_the_soonest(crm: httpx.AsyncClient) -> None:
    nxt = (await crm.get("/patients/1234/next-appointment")).json()
    assert (nxt["date"], nxt["time"]) == ("2030-01-08", "09:00")
    listed = (await crm.get("/patients/1234/appointments")).json()["appointments"]
    assert [(a["date"], a["time"]) for a in listed] == [
        ("2030-01-08", "09:00"),
        ("2030-01-17", "14:00"),
    ]


async def test_past_appointments_are_not_next(crm: httpx.AsyncClient) -> None:
    r = await crm.get("/patients/3318/next-appointment")
    assert r.status_code == 404
    body = r.json()
    assert body["error"] == "no_upcoming_appointment"
    assert "Tom Becker" in body["message"]


async def test_seeded_diary_is_on_weekdays_inside_the_window(crm: httpx.AsyncClient) -> None:
    for pid in ("4567", "1234", "2040", "5821", "7702"):
        for appt in (await crm.get(f"/patients/{pid}/appointments")).json()["appointments"]:
            day = date.fromisoformat(appt["date"])
            assert day.weekday() < 5
            assert nth_weekday(SEED, 1) <= day <= date(2030, 1, 21)


async def test_slots_exclude_booked_times(crm: httpx.AsyncClient) -> None:
    r = await crm.get("/slots", params={"date": "2030-01-08"})
    assert r.status_code == 200
    body = r.json()
    times = [s["time"] for s in body["slots"]]
    assert "09:00" not in times  # James Whitaker's filling
    assert times == [t for t in SLOT_TIMES if t != "09:00"]
    assert times[0] == "09:30" and times[-1] == "16:30"
    assert body["dentist"] == "Dr. Lukas Brandt" and body["note"] is None


async def test_slots_closed_days_and_outside_window(crm: httpx.AsyncClient) -> None:
    weekend = (await crm.get("/slots", params={"date": "2030-01-12"})).json()
    assert weekend["slots"] == [] and "closed" in weekend["note"]
    far = (await crm.get("/slots", params={"date": "2030-02-04"})).json()
    assert far["slots"] == [] and "2030-01-21" in far["note"]


async def test_slots_without_date_cover_the_window(crm: httpx.AsyncClient) -> None:
    body = (await crm.get("/slots")).json()
    assert (body["from"], body["to"]) == ("2030-01-08", "2030-01-21")
    # 10 weekdays x 16 half-hours, less the 6 seeded upcoming appointments.
    assert len(body["slots"]) == 10 * len(SLOT_TIMES) - 6


@pytest.mark.parametrize("value", ["08/01/2030", "2030-1-8", "20300108", "2030-02-30", ""])
async def test_slots_bad_date_is_422(crm: httpx.AsyncClient, value: str) -> None:
    r = await crm.get("/slots", params={"date": value})
    assert r.status_code == 422
    assert r.json()["error"] == "invalid_date"


# -- booking and cancelling -----------------------------------------------------------------
async def test_book_then_the_slot_is_taken(crm: httpx.AsyncClient) -> None:
    booking = {"patient_id": "5821", "date": "2030-01-10", "time": "13:00", "reason": "cleaning"}
    r = await crm.post("/appointments", json=booking)
    assert r.status_code == 201
    appt = r.json()
    assert appt["patient_id"] == "5821" and appt["patient_name"] == "Priya Natarajan"
    assert (appt["date"], appt["time"], appt["status"]) == ("2030-01-10", "13:00", "booked")
    assert appt["dentist"] == "Dr. Lukas Brandt" and appt["weekday"] == "Thursday"
    assert r.headers["location"] == f"/appointments/{appt['id']}"
    assert (await crm.get(f"/appointments/{appt['id']}")).json() == appt

    free = (await crm.get("/slots", params={"date": "2030-01-10"})).json()["slots"]
    assert "13:00" not in [s["time"] for s in free]
    # The new booking is sooner than her seeded consultation, so it becomes "next".
    assert (await crm.get("/patients/5821/next-appointment")).json()["id"] == appt["id"]

    again = await crm.post("/appointments", json={**booking, "patient_id": "4567"})
    assert again.status_code == 409
    body = again.json()
    assert body["error"] == "slot_taken"
    alternatives = [s["time"] for s in body["alternatives"]]
    assert alternatives and "13:00" not in alternatives
    assert all(s["date"] == "2030-01-10" for s in body["alternatives"])


async def test_seeded_appointment_slot_is_taken(crm: httpx.AsyncClient) -> None:
    booking = {"patient_id": "7702", "date": "2030-01-09", "time": "10:30", "reason": "x"}
    assert (await crm.post("/appointments", json=booking)).status_code == 409


async def test_lenient_but_normalised_fields(crm: httpx.AsyncClient) -> None:
    booking = {"patient_id": 2040, "date": "2030-01-14", "time": "9:30", "reason": " check-up "}
    r = await crm.post("/appointments", json=booking)
    assert r.status_code == 201
    assert (r.json()["patient_id"], r.json()["time"], r.json()["reason"]) == (
        "2040",
        "09:30",
        "check-up",
    )


@pytest.mark.parametrize("via", ["delete", "post"])
async def test_cancel_frees_the_slot(crm: httpx.AsyncClient, via: str) -> None:
    if via == "delete":
        r = await crm.delete("/appointments/1001")
    else:
        r = await crm.post("/appointments/1001/cancel")
    assert r.status_code == 200
    assert r.json()["id"] == "1001" and r.json()["status"] == "cancelled"
    assert r.json()["date"] == "2030-01-09" and r.json()["time"] == "10:30"

    free = (await crm.get("/slots", params={"date": "2030-01-09"})).json()["slots"]
    assert "10:30" in [s["time"] for s in free]
    assert (await crm.get("/patients/4567/next-appointment")).status_code == 404
    rebook = {"patient_id": "2040", "date": "2030-01-09", "time": "10:30", "reason": "x"}
    assert (await crm.post("/appointments", json=rebook)).status_code == 201


async def test_cancel_twice_is_harmless(crm: httpx.AsyncClient) -> None:
    assert (await crm.delete("/appointments/1001")).status_code == 200
    r = await crm.post("/appointments/1001/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"


@pytest.mark.parametrize("appointment_id", ["4242", "abc", "1" * 40, "\u00b2"])
async def test_cancel_unknown_is_404(crm: httpx.AsyncClient, appointment_id: str) -> None:
    for r in (
        await crm.delete(f"/appointments/{appointment_id}"),
        await crm.post(f"/appointments/{appointment_id}/cancel"),
    ):
        assert r.status_code == 404
        assert r.json()["error"] == "appointment_not_found"


async def test_book_unknown_patient_is_404(crm: httpx.AsyncClient) -> None:
    booking = {"patient_id": "9999", "date": "2030-01-10", "time": "13:00", "reason": "x"}
    r = await crm.post("/appointments", json=booking)
    assert r.status_code == 404
    assert r.json()["error"] == "patient_not_found"


GOOD = {"patient_id": "4567", "date": "2030-01-10", "time": "13:00", "reason": "cleaning"}


@pytest.mark.parametrize(
    ("change", "code", "field"),
    [
        ({"patient_id": None}, "invalid_request", "patient_id"),
        ({"patient_id": "45a7"}, "invalid_request", "patient_id"),
        ({"patient_id": True}, "invalid_request", "patient_id"),
        ({"patient_id": "\u0664\u0665"}, "invalid_request", "patient_id"),
        ({"date": "10/01/2030"}, "invalid_request", "date"),
        ({"date": "2030-13-01"}, "invalid_request", "date"),
        ({"time": "25:00"}, "invalid_request", "time"),
        ({"time": "1pm"}, "invalid_request", "time"),
        ({"reason": ""}, "invalid_request", "reason"),
        ({"reason": "x" * 201}, "invalid_request", "reason"),
        ({"time": "13:15"}, "not_a_slot", None),
        ({"time": "17:00"}, "not_a_slot", None),
        ({"time": "08:30"}, "not_a_slot", None),
        ({"date": "2030-01-12"}, "clinic_closed", None),
        ({"date": "2030-01-07"}, "outside_booking_window", None),
        ({"date": "2029-12-31"}, "outside_booking_window", None),
        ({"date": "2030-01-22"}, "outside_booking_window", None),
    ],
)
async def test_bad_booking_is_422(
    crm: httpx.AsyncClient, change: dict[str, Any], code: str, field: str | None
) -> None:
    r = await crm.post("/appointments", json={**GOOD, **change})
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == code
    assert body["message"]
    if field is not None:
        assert field in body["fields"]


@pytest.mark.parametrize("content", [b"", b"not json", b"[1, 2]", b"\xff\xfe", b'"text"'])
async def test_booking_body_must_be_a_json_object(crm: httpx.AsyncClient, content: bytes) -> None:
    r = await crm.post(
        "/appointments", content=content, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422
    assert r.json()["error"] == "invalid_request"


async def test_missing_fields_are_all_reported(crm: httpx.AsyncClient) -> None:
    r = await crm.post("/appointments", json={})
    assert r.status_code == 422
    assert set(r.json()["fields"]) == {"patient_id", "date", "time", "reason"}


# -- persistence ----------------------------------------------------------------------------
async def test_existing_database_is_not_reseeded(tmp_path: Path) -> None:
    db = tmp_path / "crm.sqlite"
    booking = {"patient_id": "4567", "date": "2030-01-10", "time": "13:00", "reason": "x"}
    for expected in (201, 409):
        transport = httpx.ASGITransport(app=make_app(db))
        async with httpx.AsyncClient(transport=transport, base_url="http://crm", headers=AUTH) as c:
            assert (await c.post("/appointments", json=booking)).status_code == expected
            listed = (await c.get("/patients/1234/appointments")).json()["appointments"]
            assert len(listed) == 2  # seeded once, not twice


# -- over real HTTP -------------------------------------------------------------------------
@pytest.fixture
def live_crm(tmp_path: Path) -> Iterator[str]:
    """The app on uvicorn in a thread, for what ASGITransport does not exercise (h11 headers)."""
    port = free_port()
    config = uvicorn.Config(
        make_app(tmp_path / "crm.sqlite"), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive(), "uvicorn exited during start-up"
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def test_over_loopback(live_crm: str) -> None:
    with httpx.Client(base_url=live_crm) as c:
        denied = c.get("/patients/2040")
        assert denied.status_code == 401
        assert denied.headers["www-authenticate"] == 'Bearer realm="crm"'
        r = c.get("/patients/2040/next-appointment", headers=AUTH)
        assert r.status_code == 200
        assert (r.json()["date"], r.json()["time"]) == ("2030-01-11", "15:30")
        booking = {"patient_id": "2040", "date": "2030-01-15", "time": "16:30", "reason": "x"}
        assert c.post("/appointments", json=booking, headers=AUTH).status_code == 201
        assert c.post("/appointments", json=booking, headers=AUTH).status_code == 409
