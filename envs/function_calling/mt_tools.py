"""forge_ray's own stateful tool back-ends for synthetic multi-turn tasks (none is BFCL's).

Four small pure-Python back-ends, each a class with

- ``load(state)``: the initial-state loader (a JSON object; ``STATE_KEYS`` must be present);
- ``state()``: the current state, a JSON-able deep copy (what the outcome checker compares);
- public methods decorated with ``@tool``: keyword arguments, JSON-able results; a failure
  raises ``ToolError``, which the runner (``mt_exec.py``) turns into ``{"error": message}``;
- ``tool_specs()``: one OpenAI-style JSON-schema tool spec per method, from its ``@tool``
  declaration (every parameter is required: no defaults, so a call is exactly determined).

Back-ends: ``StockroomInventory`` (a warehouse's items, bins and order picks),
``MeetingRoomDesk`` (meeting rooms and their bookings), ``CreditUnionLedger`` (member
accounts, deposits, transfers, freezes) and ``FieldNotebook`` (titled notes with labels).
Nothing here reads the clock or a random source: the same calls on the same state always give
the same results, which the gold replay and the checker rely on.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, ClassVar

JSON_TYPES = ("string", "integer", "number", "boolean")


class ToolError(Exception):
    """A call the back-end refuses (unknown id, not enough stock, ...): an error result."""


def tool(description: str, **params: tuple[str, str]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare a back-end method as a tool: its description and ``name=(json type, description)``
    per parameter, in the method's order."""
    for name, (kind, _) in params.items():
        if kind not in JSON_TYPES:
            raise ValueError(f"tool parameter {name!r}: type {kind!r} is not one of {JSON_TYPES}")

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn._tool = (description, params)  # type: ignore[attr-defined]
        return fn
    return wrap


class ToolBackend:
    """Base of the back-ends: state handling and the tool specs."""

    STATE_KEYS: ClassVar[tuple[str, ...]] = ()
    SUMMARY: ClassVar[str] = ""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def load(self, state: dict[str, Any]) -> None:
        """Load the initial state (deep-copied); raises ``ValueError`` naming a missing key."""
        if not isinstance(state, dict):
            raise ValueError(f"{type(self).__name__}: the initial state must be an object, got {type(state).__name__}")
        missing = [k for k in self.STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"{type(self).__name__}: the initial state lacks {', '.join(missing)}")
        self.data = copy.deepcopy(state)

    def state(self) -> dict[str, Any]:
        return copy.deepcopy(self.data)

    @classmethod
    def tools(cls) -> dict[str, tuple[str, dict[str, tuple[str, str]]]]:
        """``{method name: (description, params)}`` in definition order."""
        out = {}
        for klass in reversed(cls.__mro__):
            for name, fn in vars(klass).items():
                if callable(fn) and hasattr(fn, "_tool"):
                    out[name] = fn._tool
        return out

    @classmethod
    def tool_specs(cls) -> list[dict[str, Any]]:
        """One JSON-schema tool spec per method (what the task's ``tools`` show the model)."""
        specs = []
        for name, (description, params) in cls.tools().items():
            props = {p: {"type": kind, "description": text} for p, (kind, text) in params.items()}
            specs.append({"type": "function", "function": {
                "name": name, "description": f"{cls.SUMMARY} {description}".strip(),
                "parameters": {"type": "object", "properties": props, "required": list(params)}}})
        return specs


def _positive(name: str, value: Any) -> None:
    if value <= 0:
        raise ToolError(f"{name} must be positive, got {value}")


def _money(value: float) -> float:
    return round(float(value), 2)


# -- a warehouse ------------------------------------------------------------------------------------


class StockroomInventory(ToolBackend):
    """Items by SKU (``name``, ``bin``, ``units``, ``reorder_at``), the warehouse's ``bins``, and
    the ``picks`` made for orders."""

    STATE_KEYS = ("items", "bins", "picks")
    SUMMARY = "Warehouse inventory (StockroomInventory)."

    def _item(self, sku: str) -> dict[str, Any]:
        if sku not in self.data["items"]:
            raise ToolError(f"no item with SKU {sku!r}")
        return self.data["items"][sku]

    @tool("Find the SKU of an item by its name (case-insensitive).", item_name=("string", "Name of the item, e.g. 'brass hinge'."))
    def lookup_sku(self, item_name: str) -> dict[str, Any]:
        for sku, item in self.data["items"].items():
            if item["name"].lower() == item_name.strip().lower():
                return {"sku": sku, "item_name": item["name"]}
        raise ToolError(f"no item named {item_name!r}")

    @tool("Units on hand and bin of an item.", sku=("string", "SKU of the item, e.g. 'SKU-4821'."))
    def stock_on_hand(self, sku: str) -> dict[str, Any]:
        item = self._item(sku)
        return {"sku": sku, "item_name": item["name"], "units": item["units"], "bin": item["bin"]}

    @tool("Add received units of an item to the stock.", sku=("string", "SKU of the item."),
          units=("integer", "Number of units received (positive)."))
    def receive_shipment(self, sku: str, units: int) -> dict[str, Any]:
        _positive("units", units)
        item = self._item(sku)
        item["units"] += units
        return {"sku": sku, "units": item["units"]}

    @tool("Take units of an item out of stock for a customer order.", sku=("string", "SKU of the item."),
          units=("integer", "Number of units to pick (positive)."), order_ref=("string", "Reference of the order, e.g. 'ORD-5521'."))
    def pick_order_units(self, sku: str, units: int, order_ref: str) -> dict[str, Any]:
        _positive("units", units)
        item = self._item(sku)
        if units > item["units"]:
            raise ToolError(f"only {item['units']} units of {sku} on hand, cannot pick {units}")
        item["units"] -= units
        self.data["picks"].append({"order_ref": order_ref, "sku": sku, "units": units})
        return {"order_ref": order_ref, "sku": sku, "picked": units, "units_left": item["units"]}

    @tool("Move an item to another storage bin.", sku=("string", "SKU of the item."), bin_code=("string", "Code of the target bin, e.g. 'C2'."))
    def assign_bin(self, sku: str, bin_code: str) -> dict[str, Any]:
        item = self._item(sku)
        if bin_code not in self.data["bins"]:
            raise ToolError(f"no bin {bin_code!r}; bins: {', '.join(self.data['bins'])}")
        holder = next((s for s, it in self.data["items"].items() if it["bin"] == bin_code and s != sku), None)
        if holder is not None:
            raise ToolError(f"bin {bin_code} already holds {holder}")
        item["bin"] = bin_code
        return {"sku": sku, "bin": bin_code}

    @tool("SKUs whose units on hand are at or below their reorder level.")
    def reorder_report(self) -> dict[str, Any]:
        low = sorted(s for s, it in self.data["items"].items() if it["units"] <= it["reorder_at"])
        return {"skus": low}


# -- a meeting-room calendar -------------------------------------------------------------------------

OPEN_HOUR, CLOSE_HOUR = 8, 18


class MeetingRoomDesk(ToolBackend):
    """Meeting ``rooms`` by id (``name``, ``seats``), their ``bookings`` by id (``room_id``,
    ``date``, ``start_hour``, ``hours``, ``host``) and the number of the next booking."""

    STATE_KEYS = ("rooms", "bookings", "next_booking")
    SUMMARY = "Meeting-room bookings (MeetingRoomDesk)."

    def _room(self, room_id: str) -> dict[str, Any]:
        if room_id not in self.data["rooms"]:
            raise ToolError(f"no room with id {room_id!r}")
        return self.data["rooms"][room_id]

    def _booking(self, booking_id: str) -> dict[str, Any]:
        if booking_id not in self.data["bookings"]:
            raise ToolError(f"no booking with id {booking_id!r}")
        return self.data["bookings"][booking_id]

    def _check_slot(self, room_id: str, date: str, start_hour: int, hours: int, ignore: str | None = None) -> None:
        _positive("hours", hours)
        if start_hour < OPEN_HOUR or start_hour + hours > CLOSE_HOUR:
            raise ToolError(f"rooms can be booked between {OPEN_HOUR}:00 and {CLOSE_HOUR}:00 only")
        for bid, b in self.data["bookings"].items():
            if bid != ignore and b["room_id"] == room_id and b["date"] == date and \
                    start_hour < b["start_hour"] + b["hours"] and b["start_hour"] < start_hour + hours:
                raise ToolError(f"the room is taken then by booking {bid}")

    @tool("Find a meeting room by its name.", room_name=("string", "Name of the room, e.g. 'Birch'."))
    def find_room(self, room_name: str) -> dict[str, Any]:
        for rid, room in self.data["rooms"].items():
            if room["name"].lower() == room_name.strip().lower():
                return {"room_id": rid, "room_name": room["name"], "seats": room["seats"]}
        raise ToolError(f"no room named {room_name!r}")

    @tool("Rooms with at least the given number of seats, fewest seats first.", seats=("integer", "Minimum number of seats."))
    def rooms_seating_at_least(self, seats: int) -> dict[str, Any]:
        rooms = [{"room_id": rid, "room_name": r["name"], "seats": r["seats"]} for rid, r in self.data["rooms"].items() if r["seats"] >= seats]
        return {"rooms": sorted(rooms, key=lambda r: (r["seats"], r["room_id"]))}

    @tool("Book a room for a meeting.", room_id=("string", "Id of the room, e.g. 'RM-12'."),
          date=("string", "Date in YYYY-MM-DD format."), start_hour=("integer", "Starting hour, 8 to 17 (24-hour clock)."),
          hours=("integer", "Length of the meeting in whole hours."), host=("string", "Full name of the person hosting."))
    def reserve_meeting_room(self, room_id: str, date: str, start_hour: int, hours: int, host: str) -> dict[str, Any]:
        self._room(room_id)
        self._check_slot(room_id, date, start_hour, hours)
        bid = f"BK-{self.data['next_booking']}"
        self.data["next_booking"] += 1
        self.data["bookings"][bid] = {"room_id": room_id, "date": date, "start_hour": start_hour, "hours": hours, "host": host}
        return {"booking_id": bid, "room_id": room_id, "date": date, "start_hour": start_hour, "hours": hours}

    @tool("The bookings of a room on one day, in time order.", room_id=("string", "Id of the room."),
          date=("string", "Date in YYYY-MM-DD format."))
    def day_schedule(self, room_id: str, date: str) -> dict[str, Any]:
        self._room(room_id)
        rows = [{"booking_id": bid, "start_hour": b["start_hour"], "hours": b["hours"], "host": b["host"]}
                for bid, b in self.data["bookings"].items() if b["room_id"] == room_id and b["date"] == date]
        return {"room_id": room_id, "date": date, "bookings": sorted(rows, key=lambda r: r["start_hour"])}

    @tool("Move a booking to another starting hour on the same day.", booking_id=("string", "Id of the booking, e.g. 'BK-104'."),
          start_hour=("integer", "New starting hour (24-hour clock)."))
    def move_reservation(self, booking_id: str, start_hour: int) -> dict[str, Any]:
        b = self._booking(booking_id)
        self._check_slot(b["room_id"], b["date"], start_hour, b["hours"], ignore=booking_id)
        b["start_hour"] = start_hour
        return {"booking_id": booking_id, "start_hour": start_hour, "hours": b["hours"]}

    @tool("Cancel a booking.", booking_id=("string", "Id of the booking."))
    def cancel_reservation(self, booking_id: str) -> dict[str, Any]:
        self._booking(booking_id)
        del self.data["bookings"][booking_id]
        return {"cancelled": booking_id}


# -- a bank ledger ------------------------------------------------------------------------------------


class CreditUnionLedger(ToolBackend):
    """Member ``accounts`` by number (``member``, ``balance``, ``frozen``) and the ledger
    ``entries`` (``account_no``, ``amount``, ``memo``), oldest first."""

    STATE_KEYS = ("accounts", "entries")
    SUMMARY = "Credit-union ledger (CreditUnionLedger)."

    def _account(self, account_no: str, *, open_only: bool = False) -> dict[str, Any]:
        if account_no not in self.data["accounts"]:
            raise ToolError(f"no account {account_no!r}")
        account = self.data["accounts"][account_no]
        if open_only and account["frozen"]:
            raise ToolError(f"account {account_no} is frozen")
        return account

    def _post(self, account_no: str, amount: float, memo: str) -> None:
        account = self.data["accounts"][account_no]
        account["balance"] = _money(account["balance"] + amount)
        self.data["entries"].append({"account_no": account_no, "amount": _money(amount), "memo": memo})

    @tool("Find a member's account number by the member's full name.", member_name=("string", "Full name, e.g. 'Ana Ruiz'."))
    def account_for_member(self, member_name: str) -> dict[str, Any]:
        for number, account in self.data["accounts"].items():
            if account["member"].lower() == member_name.strip().lower():
                return {"account_no": number, "member_name": account["member"]}
        raise ToolError(f"no member named {member_name!r}")

    @tool("Current balance of an account.", account_no=("string", "Account number, e.g. 'AC-30417'."))
    def member_balance(self, account_no: str) -> dict[str, Any]:
        account = self._account(account_no)
        return {"account_no": account_no, "balance": account["balance"], "frozen": account["frozen"]}

    @tool("Deposit money into an account.", account_no=("string", "Account number."),
          amount=("number", "Amount in dollars (positive)."), memo=("string", "Memo of the ledger entry."))
    def post_deposit(self, account_no: str, amount: float, memo: str) -> dict[str, Any]:
        _positive("amount", amount)
        self._account(account_no, open_only=True)
        self._post(account_no, amount, memo)
        return {"account_no": account_no, "balance": self.data["accounts"][account_no]["balance"]}

    @tool("Transfer money from one account to another.", from_account=("string", "Account number to take the money from."),
          to_account=("string", "Account number to credit."), amount=("number", "Amount in dollars (positive)."),
          memo=("string", "Memo of both ledger entries."))
    def wire_between_accounts(self, from_account: str, to_account: str, amount: float, memo: str) -> dict[str, Any]:
        _positive("amount", amount)
        if from_account == to_account:
            raise ToolError("the two accounts must differ")
        source = self._account(from_account, open_only=True)
        self._account(to_account, open_only=True)
        if amount > source["balance"]:
            raise ToolError(f"insufficient funds: {from_account} holds {source['balance']}")
        self._post(from_account, -amount, memo)
        self._post(to_account, amount, memo)
        return {"from_balance": source["balance"], "to_balance": self.data["accounts"][to_account]["balance"]}

    @tool("Freeze an account: no deposit or transfer until it is unfrozen.", account_no=("string", "Account number."))
    def freeze_member_account(self, account_no: str) -> dict[str, Any]:
        self._account(account_no)["frozen"] = True
        return {"account_no": account_no, "frozen": True}

    @tool("The most recent ledger entries of an account, newest first.", account_no=("string", "Account number."),
          count=("integer", "How many entries to return."))
    def ledger_entries(self, account_no: str, count: int) -> dict[str, Any]:
        _positive("count", count)
        self._account(account_no)
        rows = [e for e in self.data["entries"] if e["account_no"] == account_no]
        return {"account_no": account_no, "entries": [{"amount": e["amount"], "memo": e["memo"]} for e in reversed(rows)][:count]}


# -- a note store -------------------------------------------------------------------------------------


class FieldNotebook(ToolBackend):
    """Titled ``notes`` by id (``title``, ``body``, ``labels``) and the number of the next note."""

    STATE_KEYS = ("notes", "next_note")
    SUMMARY = "Notebook (FieldNotebook)."

    def _note(self, note_id: str) -> dict[str, Any]:
        if note_id not in self.data["notes"]:
            raise ToolError(f"no note with id {note_id!r}")
        return self.data["notes"][note_id]

    @tool("Create a note.", title=("string", "Title of the note (unique)."), body=("string", "Text of the note."))
    def write_note(self, title: str, body: str) -> dict[str, Any]:
        if any(n["title"].lower() == title.strip().lower() for n in self.data["notes"].values()):
            raise ToolError(f"a note titled {title!r} already exists")
        nid = f"NT-{self.data['next_note']}"
        self.data["next_note"] += 1
        self.data["notes"][nid] = {"title": title, "body": body, "labels": []}
        return {"note_id": nid, "title": title}

    @tool("Find a note's id by its title.", title=("string", "Title of the note."))
    def note_for_title(self, title: str) -> dict[str, Any]:
        for nid, note in self.data["notes"].items():
            if note["title"].lower() == title.strip().lower():
                return {"note_id": nid, "title": note["title"]}
        raise ToolError(f"no note titled {title!r}")

    @tool("Append text to the end of a note (after a space).", note_id=("string", "Id of the note, e.g. 'NT-7'."),
          text=("string", "Text to append."))
    def extend_note(self, note_id: str, text: str) -> dict[str, Any]:
        note = self._note(note_id)
        note["body"] = f"{note['body']} {text}" if note["body"] else text
        return {"note_id": note_id, "body": note["body"]}

    @tool("Attach a label to a note.", note_id=("string", "Id of the note."), label=("string", "Label, one lower-case word."))
    def add_note_label(self, note_id: str, label: str) -> dict[str, Any]:
        note = self._note(note_id)
        if label not in note["labels"]:
            note["labels"].append(label)
        return {"note_id": note_id, "labels": list(note["labels"])}

    @tool("Read a note.", note_id=("string", "Id of the note."))
    def open_note(self, note_id: str) -> dict[str, Any]:
        note = self._note(note_id)
        return {"note_id": note_id, "title": note["title"], "body": note["body"], "labels": list(note["labels"])}

    @tool("Delete a note.", note_id=("string", "Id of the note."))
    def trash_note(self, note_id: str) -> dict[str, Any]:
        self._note(note_id)
        del self.data["notes"][note_id]
        return {"trashed": note_id}

    @tool("Titles and ids of the notes carrying a label.", label=("string", "The label."))
    def notes_under_label(self, label: str) -> dict[str, Any]:
        rows = [{"note_id": nid, "title": n["title"]} for nid, n in self.data["notes"].items() if label in n["labels"]]
        return {"label": label, "notes": rows}


BACKENDS: dict[str, type[ToolBackend]] = {cls.__name__: cls for cls in (StockroomInventory, MeetingRoomDesk, CreditUnionLedger, FieldNotebook)}


def backend_class(name: str) -> type[ToolBackend]:
    if name not in BACKENDS:
        raise ValueError(f"unknown forge_ray back-end {name!r}; known: {', '.join(BACKENDS)}")
    return BACKENDS[name]


def function_names() -> set[str]:
    """Every tool name of forge_ray's multi-turn back-ends."""
    return {name for cls in BACKENDS.values() for name in cls.tools()}
