"""Initial states and user intents of the synthetic multi-turn tasks (``mt_synthetic.py``).

Per back-end of ``mt_tools.py``: ``initial_<...>(rng)`` draws a fresh initial state, and each
intent is a function ``(Draft) -> (user request, closing answer) | None`` that picks its targets
from the live state, runs the gold calls step by step (``Draft.step``: one assistant reply's
calls; a later step uses an earlier step's results) and phrases the request from one of several
templates, naming every value the calls need that no earlier result gives. ``None`` means the
intent does not fit the current state (nothing to pick, no free slot). Follow-up intents act on
what an earlier turn produced or looked up (``Draft.memory``: "move that booking").
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable

from envs.function_calling.mt_exec import ToolBackends

PEOPLE = ("Ana Ruiz", "Tomas Berg", "Priya Nair", "Kofi Mensah", "Lena Vogel", "Yuki Sato", "Omar Haddad", "Ines Costa",
          "Marta Kowalska", "Raj Patel", "Sofia Greco", "Daniel Okafor")
ITEMS = ("brass hinge", "copper elbow", "oak dowel", "steel bracket", "rubber gasket", "glass jar", "linen roll", "cedar plank",
         "wool blanket", "paper lantern", "clay pot", "nylon rope", "cotton apron", "tin whistle", "bamboo whisk", "felt pad",
         "zinc washer", "canvas tote", "enamel mug", "jute doormat")
BINS = tuple(f"{row}{col}" for row in "ABCD" for col in range(1, 5))
ROOMS = ("Birch", "Maple", "Willow", "Aspen", "Juniper", "Rowan", "Hazel", "Linden", "Alder", "Sequoia", "Magnolia", "Poplar")
MEMOS = ("rent share", "book club dues", "garden supplies", "birthday gift", "bike repair", "utility split", "concert tickets",
         "school trip", "roof fund", "dinner refund")
TITLES = ("Supplier call", "Garden plan", "Budget ideas", "Packing list", "Reading queue", "Team retro", "Recipe swaps",
          "Studio moves", "Tax receipts", "Bike fixes", "Quarterly goals", "Gift ideas")
TEXTS = ("ask about the May invoice", "plant the tomatoes after the frost", "cancel two streaming plans", "pack the rain jacket",
         "return the library books", "order more printer paper", "call the plumber on Friday", "try the lentil soup",
         "check the tyre pressure", "book the vet for the cat", "renew the parking permit", "back up the laptop")
LABELS = ("work", "home", "urgent", "travel", "money", "later", "family", "ideas")


class GoldCallFailed(Exception):
    """A gold call of an intent returned an error: the intent does not fit this state."""


@dataclass
class Draft:
    """A task under construction: the live back-ends, the gold steps of the current turn, and
    facts earlier turns left for follow-ups."""

    rng: random.Random
    backends: ToolBackends
    memory: dict[str, Any] = field(default_factory=dict)  # what the previous turn left (read it)
    fresh: dict[str, Any] = field(default_factory=dict)  # what this turn leaves for the next one
    steps: list[list[dict[str, Any]]] = field(default_factory=list)

    def remember(self, key: str, value: Any) -> None:
        self.fresh[key] = value

    def data(self, class_name: str) -> dict[str, Any]:
        return self.backends.instances[class_name].data

    def step(self, *calls: tuple[str, dict[str, Any]]) -> list[Any]:
        """Run one assistant reply's gold calls; their results, in order. A gold call that
        fails raises ``GoldCallFailed`` (the draft is dropped)."""
        recorded = [{"name": name, "arguments": dict(arguments)} for name, arguments in calls]
        self.steps.append(recorded)
        results = [self.backends.execute(c) for c in recorded]
        failed = [(c["name"], r["error"]) for c, r in zip(recorded, results) if isinstance(r, dict) and "error" in r]
        if failed:
            raise GoldCallFailed(f"gold call {failed[0][0]} failed: {failed[0][1]}")
        return results

    def pick(self, templates: tuple[str, ...], **fields: Any) -> str:
        return self.rng.choice(templates).format(**fields)


Intent = Callable[[Draft], "tuple[str, str] | None"]


def _unique_code(rng: random.Random, prefix: str, lo: int, hi: int, taken: set[str]) -> str:
    while True:
        code = f"{prefix}-{rng.randint(lo, hi)}"
        if code not in taken:
            taken.add(code)
            return code


def _money(rng: random.Random, lo: int, hi: int) -> float | int:
    whole = rng.randint(lo, hi)
    return whole if rng.random() < 0.6 else whole + rng.choice((0.25, 0.5, 0.75))


def dollars(amount: float | int) -> str:
    return f"${amount}" if isinstance(amount, int) else f"${amount:.2f}"


def _hours(n: int) -> str:
    return f"{n} hour" if n == 1 else f"{n} hours"


# -- StockroomInventory -------------------------------------------------------------------------------

WAREHOUSE = "StockroomInventory"


def initial_stockroom(rng: random.Random) -> dict[str, Any]:
    names, bins, taken = rng.sample(ITEMS, rng.randint(5, 8)), rng.sample(BINS, 8), set()
    items = {_unique_code(rng, "SKU", 1000, 9999, taken): {"name": name, "bin": bins[i], "units": rng.randint(0, 80),
                                                           "reorder_at": rng.randint(5, 20)} for i, name in enumerate(names)}
    return {"items": items, "bins": list(BINS), "picks": []}


def _item(d: Draft, min_units: int = 0) -> tuple[str, dict[str, Any]] | None:
    options = [(sku, it) for sku, it in d.data(WAREHOUSE)["items"].items() if it["units"] >= min_units]
    return d.rng.choice(options) if options else None


def stock_check(d: Draft) -> tuple[str, str] | None:
    sku, item = _item(d)
    text = d.pick(("How many {item} units do we have on hand?", "Can you check the stock level of the {item}?",
                   "What's our current stock of {item}, and which bin is it in?", "Please look up how much {item} stock is left."),
                  item=item["name"])
    d.step(("lookup_sku", {"item_name": item["name"]}))
    (r,) = d.step(("stock_on_hand", {"sku": sku}))
    d.remember("item", (sku, item["name"]))
    return text, f"We have {r['units']} units of {item['name']} (SKU {sku}) in bin {r['bin']}."


def receive(d: Draft) -> tuple[str, str] | None:
    sku, item = _item(d)
    n = d.rng.randint(5, 60)
    text = d.pick(("A delivery of {n} {item} units just arrived, please add them to stock.", "We received {n} units of {item}; book them in.",
                   "Log an incoming shipment of {n} units of {item}."), n=n, item=item["name"])
    d.step(("lookup_sku", {"item_name": item["name"]}))
    (r,) = d.step(("receive_shipment", {"sku": sku, "units": n}))
    d.remember("item", (sku, item["name"]))
    return text, f"Booked in: {item['name']} now has {r['units']} units."


def _pick_text(d: Draft, n: int, ref: str, item: str | None) -> str:
    if item is None:
        return d.pick(("Pick {n} of those for order {ref}.", "Good. Take {n} of them out for order {ref}, please."), n=n, ref=ref)
    return d.pick(("Pick {n} units of {item} for order {ref}.", "Order {ref} needs {n} {item} units. Please pick them.",
                   "Take {n} units of {item} out of stock for order {ref}."), n=n, ref=ref, item=item)


def pick(d: Draft, follow_up: bool = False) -> tuple[str, str] | None:
    if follow_up:
        sku = d.memory["item"][0]
        item = d.data(WAREHOUSE)["items"][sku]
        if item["units"] < 1:
            return None
    else:
        chosen = _item(d, min_units=1)
        if chosen is None:
            return None
        sku, item = chosen
    n, ref = d.rng.randint(1, min(item["units"], 25)), f"ORD-{d.rng.randint(1000, 9999)}"
    text = _pick_text(d, n, ref, None if follow_up else item["name"])
    if not follow_up:
        d.step(("lookup_sku", {"item_name": item["name"]}))
    (r,) = d.step(("pick_order_units", {"sku": sku, "units": n, "order_ref": ref}))
    d.remember("item", (sku, item["name"]))
    return text, f"Picked {n} units for order {ref}; {r['units_left']} left."


def pick_follow_up(d: Draft) -> tuple[str, str] | None:
    return pick(d, follow_up=True)


def move_bin(d: Draft) -> tuple[str, str] | None:
    sku, item = _item(d)
    used = {it["bin"] for it in d.data(WAREHOUSE)["items"].values()}
    free = [b for b in d.data(WAREHOUSE)["bins"] if b not in used]
    if not free:
        return None
    target = d.rng.choice(free)
    text = d.pick(("Move the {item} stock to bin {bin}.", "Please relocate the {item} to bin {bin}.",
                   "Put the {item} in bin {bin} from now on."), item=item["name"], bin=target)
    d.step(("lookup_sku", {"item_name": item["name"]}))
    d.step(("assign_bin", {"sku": sku, "bin_code": target}))
    d.remember("item", (sku, item["name"]))
    return text, f"The {item['name']} is now in bin {target}."


def reorder(d: Draft) -> tuple[str, str] | None:
    text = d.pick(("Which SKUs are at or below their reorder level?", "Give me the reorder report, please.",
                   "What needs reordering right now?"))
    (r,) = d.step(("reorder_report", {}))
    return text, (f"These SKUs need reordering: {', '.join(r['skus'])}." if r["skus"] else "Nothing needs reordering right now.")


# -- MeetingRoomDesk ----------------------------------------------------------------------------------

ROOM_DESK = "MeetingRoomDesk"


def _date(rng: random.Random) -> str:
    return f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def initial_room_desk(rng: random.Random) -> dict[str, Any]:
    taken: set[str] = set()
    rooms = {_unique_code(rng, "RM", 10, 99, taken): {"name": name, "seats": rng.choice((4, 6, 8, 10, 12, 16, 20))}
             for name in rng.sample(ROOMS, rng.randint(4, 6))}
    state = {"rooms": rooms, "bookings": {}, "next_booking": rng.randint(100, 900)}
    dates = [_date(rng) for _ in range(2)]
    for _ in range(rng.randint(3, 7)):
        room_id, date, hours = rng.choice(sorted(rooms)), rng.choice(dates), rng.randint(1, 3)
        start = rng.randint(8, 18 - hours)
        if _free(state, room_id, date, start, hours):
            state["bookings"][f"BK-{state['next_booking']}"] = {"room_id": room_id, "date": date, "start_hour": start,
                                                                "hours": hours, "host": rng.choice(PEOPLE)}
            state["next_booking"] += 1
    return state


def _free(state: dict[str, Any], room_id: str, date: str, start: int, hours: int, ignore: str | None = None) -> bool:
    return all(not (b["room_id"] == room_id and b["date"] == date and start < b["start_hour"] + b["hours"] and b["start_hour"] < start + hours)
               for bid, b in state["bookings"].items() if bid != ignore)


def _slot(d: Draft, room_id: str, date: str) -> tuple[int, int] | None:
    hours = d.rng.randint(1, 3)
    starts = [s for s in range(8, 19 - hours) if _free(d.data(ROOM_DESK), room_id, date, s, hours)]
    return (d.rng.choice(starts), hours) if starts else None


def _booking_date(d: Draft) -> str:
    dates = sorted({b["date"] for b in d.data(ROOM_DESK)["bookings"].values()})
    return d.rng.choice(dates) if dates and d.rng.random() < 0.5 else _date(d.rng)


def reserve(d: Draft) -> tuple[str, str] | None:
    state = d.data(ROOM_DESK)
    room_id = d.rng.choice(sorted(state["rooms"]))
    room, date, host = state["rooms"][room_id]["name"], _booking_date(d), d.rng.choice(PEOPLE)
    slot = _slot(d, room_id, date)
    if slot is None:
        return None
    start, hours = slot
    text = d.pick(("Book the {room} room on {date} from {start}:00 for {h}, host {host}.",
                   "Please reserve {room} for {host} on {date}, starting at {start}:00, for {h}.",
                   "{host} needs the {room} room on {date} at {start}:00 for {h}; can you book it?"),
                  room=room, date=date, start=start, h=_hours(hours), host=host)
    d.step(("find_room", {"room_name": room}))
    (r,) = d.step(("reserve_meeting_room", {"room_id": room_id, "date": date, "start_hour": start, "hours": hours, "host": host}))
    d.remember("booking", r["booking_id"])
    return text, f"Booked {room} on {date} at {start}:00 for {_hours(hours)}: booking {r['booking_id']}."


def reserve_by_size(d: Draft) -> tuple[str, str] | None:
    state = d.data(ROOM_DESK)
    seats = d.rng.randint(3, 14)
    fitting = sorted((r["seats"], rid) for rid, r in state["rooms"].items() if r["seats"] >= seats)
    if not fitting or (len(fitting) > 1 and fitting[0][0] == fitting[1][0]):
        return None  # "the smallest room" must be one room
    room_id, date, host = fitting[0][1], _date(d.rng), d.rng.choice(PEOPLE)
    slot = _slot(d, room_id, date)
    if slot is None:
        return None
    start, hours = slot
    text = d.pick(("I need a room for {n} people on {date} at {start}:00 for {h}, booked for {host}. Take the smallest room that fits.",
                   "Find the smallest room with at least {n} seats and book it on {date} from {start}:00 for {h} for {host}."),
                  n=seats, date=date, start=start, h=_hours(hours), host=host)
    d.step(("rooms_seating_at_least", {"seats": seats}))
    (r,) = d.step(("reserve_meeting_room", {"room_id": room_id, "date": date, "start_hour": start, "hours": hours, "host": host}))
    d.remember("booking", r["booking_id"])
    return text, f"Booked {state['rooms'][room_id]['name']} ({state['rooms'][room_id]['seats']} seats): booking {r['booking_id']}."


def schedule(d: Draft) -> tuple[str, str] | None:
    state = d.data(ROOM_DESK)
    room_id = d.rng.choice(sorted(state["rooms"]))
    room, date = state["rooms"][room_id]["name"], _booking_date(d)
    text = d.pick(("What's booked in the {room} room on {date}?", "Show me the {room} room's schedule for {date}."), room=room, date=date)
    d.step(("find_room", {"room_name": room}))
    (r,) = d.step(("day_schedule", {"room_id": room_id, "date": date}))
    rows = [f"{b['start_hour']}:00 for {_hours(b['hours'])} ({b['host']})" for b in r["bookings"]]
    return text, f"{room} on {date}: {'; '.join(rows)}." if rows else f"{room} is free all day on {date}."


def move_booking(d: Draft) -> tuple[str, str] | None:
    bid = d.memory["booking"]
    booking = d.data(ROOM_DESK)["bookings"][bid]
    starts = [s for s in range(8, 19 - booking["hours"]) if s != booking["start_hour"]
              and _free(d.data(ROOM_DESK), booking["room_id"], booking["date"], s, booking["hours"], ignore=bid)]
    if not starts:
        return None
    start = d.rng.choice(starts)
    text = d.pick(("Actually, move that booking to {start}:00.", "Can you push that meeting to start at {start}:00 instead?"), start=start)
    d.step(("move_reservation", {"booking_id": bid, "start_hour": start}))
    d.remember("booking", bid)
    return text, f"Booking {bid} now starts at {start}:00."


def cancel_booking_follow_up(d: Draft) -> tuple[str, str] | None:
    bid = d.memory["booking"]
    text = d.pick(("Cancel that booking, please.", "Never mind, drop that reservation."))
    d.step(("cancel_reservation", {"booking_id": bid}))
    return text, f"Booking {bid} is cancelled."


def cancel_by_host(d: Draft) -> tuple[str, str] | None:
    state = d.data(ROOM_DESK)
    keys = [(b["room_id"], b["date"], b["host"]) for b in state["bookings"].values()]
    unique = [(bid, b) for bid, b in state["bookings"].items() if keys.count((b["room_id"], b["date"], b["host"])) == 1]
    if not unique:
        return None
    bid, b = d.rng.choice(sorted(unique))
    room = state["rooms"][b["room_id"]]["name"]
    text = d.pick(("Cancel {host}'s booking in the {room} room on {date}.",
                   "{host} won't need the {room} room on {date} after all; please cancel it."), host=b["host"], room=room, date=b["date"])
    d.step(("find_room", {"room_name": room}))
    d.step(("day_schedule", {"room_id": b["room_id"], "date": b["date"]}))
    d.step(("cancel_reservation", {"booking_id": bid}))
    return text, f"Cancelled {b['host']}'s booking {bid}."


# -- CreditUnionLedger --------------------------------------------------------------------------------

LEDGER = "CreditUnionLedger"


def initial_ledger(rng: random.Random) -> dict[str, Any]:
    taken: set[str] = set()
    accounts = {_unique_code(rng, "AC", 10000, 99999, taken): {"member": name, "balance": round(rng.uniform(50, 5000), 2),
                                                               "frozen": rng.random() < 0.1} for name in rng.sample(PEOPLE, rng.randint(4, 6))}
    entries = [{"account_no": rng.choice(sorted(accounts)), "amount": float(_money(rng, 5, 400)), "memo": rng.choice(MEMOS)}
               for _ in range(rng.randint(3, 10))]
    return {"accounts": accounts, "entries": entries}


def _member(d: Draft, open_only: bool = True, exclude: str | None = None) -> tuple[str, dict[str, Any]] | None:
    options = [(no, a) for no, a in sorted(d.data(LEDGER)["accounts"].items()) if (not open_only or not a["frozen"]) and no != exclude]
    return d.rng.choice(options) if options else None


def balance(d: Draft) -> tuple[str, str] | None:
    no, account = _member(d, open_only=False)
    text = d.pick(("What's the balance on {m}'s account?", "How much money does {m} have in their account?",
                   "Check {m}'s account balance, please."), m=account["member"])
    d.step(("account_for_member", {"member_name": account["member"]}))
    (r,) = d.step(("member_balance", {"account_no": no}))
    d.remember("account", no)
    return text, f"{account['member']}'s account {no} holds ${r['balance']:.2f}."


def _deposit_text(d: Draft, amount: float | int, memo: str, member: str | None) -> str:
    if member is None:
        return d.pick(('Also deposit {a} into that same account, memo "{memo}".', 'Now post a deposit of {a} there with the memo "{memo}".'),
                      a=dollars(amount), memo=memo)
    return d.pick(('Deposit {a} into {m}\'s account with the memo "{memo}".',
                   '{m} brought in {a} in cash; post it as a deposit with memo "{memo}".'), a=dollars(amount), memo=memo, m=member)


def deposit(d: Draft, follow_up: bool = False) -> tuple[str, str] | None:
    if follow_up:
        no = d.memory["account"]
        account = d.data(LEDGER)["accounts"][no]
        if account["frozen"]:
            return None
    else:
        no, account = _member(d) or (None, None)
        if no is None:
            return None
    amount, memo = _money(d.rng, 5, 900), d.rng.choice(MEMOS)
    text = _deposit_text(d, amount, memo, None if follow_up else account["member"])
    if not follow_up:
        d.step(("account_for_member", {"member_name": account["member"]}))
    (r,) = d.step(("post_deposit", {"account_no": no, "amount": amount, "memo": memo}))
    d.remember("account", no)
    return text, f"Deposited {dollars(amount)}; the balance is now ${r['balance']:.2f}."


def deposit_follow_up(d: Draft) -> tuple[str, str] | None:
    return deposit(d, follow_up=True)


def transfer(d: Draft) -> tuple[str, str] | None:
    source = _member(d)
    if source is None or source[1]["balance"] < 6:
        return None
    target = _member(d, exclude=source[0])
    if target is None:
        return None
    amount, memo = _money(d.rng, 5, int(min(source[1]["balance"], 900)) - 1), d.rng.choice(MEMOS)
    a, b = source[1]["member"], target[1]["member"]
    text = d.pick(('Transfer {amt} from {a} to {b} with the memo "{memo}".', 'Please send {amt} from {a}\'s account to {b}\'s, memo "{memo}".',
                   '{a} owes {b} {amt}; move it between their accounts with memo "{memo}".'), amt=dollars(amount), a=a, b=b, memo=memo)
    d.step(("account_for_member", {"member_name": a}), ("account_for_member", {"member_name": b}))
    (r,) = d.step(("wire_between_accounts", {"from_account": source[0], "to_account": target[0], "amount": amount, "memo": memo}))
    return text, f"Sent {dollars(amount)} from {a} to {b}; {a}'s balance is now ${r['from_balance']:.2f}."


def freeze(d: Draft) -> tuple[str, str] | None:
    chosen = _member(d)
    if chosen is None:
        return None
    no, account = chosen
    text = d.pick(("{m} lost their card; freeze their account.", "Please freeze {m}'s account right away."), m=account["member"])
    d.step(("account_for_member", {"member_name": account["member"]}))
    d.step(("freeze_member_account", {"account_no": no}))
    d.remember("account", no)
    return text, f"Account {no} of {account['member']} is frozen."


def entries(d: Draft) -> tuple[str, str] | None:
    no, account = _member(d, open_only=False)
    k = d.rng.randint(2, 5)
    text = d.pick(("Show the last {k} ledger entries for {m}.", "What are {m}'s {k} most recent transactions?"), k=k, m=account["member"])
    d.step(("account_for_member", {"member_name": account["member"]}))
    (r,) = d.step(("ledger_entries", {"account_no": no, "count": k}))
    d.remember("account", no)
    rows = [f"{dollars(e['amount'])} ({e['memo']})" for e in r["entries"]]
    return text, f"Recent entries: {'; '.join(rows)}." if rows else f"{account['member']}'s account has no entries yet."


def balance_follow_up(d: Draft) -> tuple[str, str] | None:
    no = d.memory["account"]
    text = d.pick(("What's that account's balance now?", "And how much is in that account now?"))
    (r,) = d.step(("member_balance", {"account_no": no}))
    d.remember("account", no)
    return text, f"Account {no} holds ${r['balance']:.2f}."


# -- FieldNotebook ------------------------------------------------------------------------------------

NOTEBOOK = "FieldNotebook"


def initial_notebook(rng: random.Random) -> dict[str, Any]:
    start = rng.randint(1, 60)
    notes = {f"NT-{start + i}": {"title": title, "body": rng.choice(TEXTS), "labels": sorted(rng.sample(LABELS, rng.randint(0, 2)))}
             for i, title in enumerate(rng.sample(TITLES, rng.randint(3, 6)))}
    return {"notes": notes, "next_note": start + len(notes)}


def _note(d: Draft) -> tuple[str, dict[str, Any]] | None:
    notes = sorted(d.data(NOTEBOOK)["notes"].items())
    return d.rng.choice(notes) if notes else None


def write(d: Draft) -> tuple[str, str] | None:
    used = {n["title"] for n in d.data(NOTEBOOK)["notes"].values()}
    titles = [t for t in TITLES if t not in used]
    if not titles:
        return None
    title, body = d.rng.choice(titles), d.rng.choice(TEXTS)
    text = d.pick(('Create a note titled "{t}" that says "{b}".', 'Make a new note, "{t}", with the text "{b}".',
                   'Write down "{b}" in a new note called "{t}".'), t=title, b=body)
    (r,) = d.step(("write_note", {"title": title, "body": body}))
    d.remember("note", r["note_id"])
    return text, f'Saved the note "{title}" as {r["note_id"]}.'


def _by_title(d: Draft, templates: tuple[str, ...], **fields: Any) -> tuple[str, str, dict[str, Any], str] | None:
    chosen = _note(d)
    if chosen is None:
        return None
    nid, note = chosen
    text = d.pick(templates, t=note["title"], **fields)
    d.step(("note_for_title", {"title": note["title"]}))
    d.remember("note", nid)
    return nid, note["title"], note, text


def append(d: Draft) -> tuple[str, str] | None:
    extra = d.rng.choice(TEXTS)
    found = _by_title(d, ('Add "{x}" to my "{t}" note.', 'Append "{x}" to the note titled "{t}".'), x=extra)
    if found is None:
        return None
    nid, title, _, text = found
    d.step(("extend_note", {"note_id": nid, "text": extra}))
    return text, f'Added it to "{title}".'


def label(d: Draft) -> tuple[str, str] | None:
    tag = d.rng.choice(LABELS)
    found = _by_title(d, ('Label the "{t}" note as {x}.', 'Tag my "{t}" note with {x}.'), x=tag)
    if found is None:
        return None
    nid, title, _, text = found
    d.step(("add_note_label", {"note_id": nid, "label": tag}))
    return text, f'"{title}" is labelled {tag}.'


def read(d: Draft) -> tuple[str, str] | None:
    found = _by_title(d, ('What does my "{t}" note say?', 'Read me the "{t}" note.'))
    if found is None:
        return None
    nid, title, _, text = found
    (r,) = d.step(("open_note", {"note_id": nid}))
    return text, f'"{title}" says: {r["body"]}'


def trash(d: Draft) -> tuple[str, str] | None:
    found = _by_title(d, ('Delete the note called "{t}".', 'I no longer need the "{t}" note; please delete it.'))
    if found is None:
        return None
    nid, title, _, text = found
    d.step(("trash_note", {"note_id": nid}))
    d.fresh.pop("note", None)  # nothing to follow up on
    return text, f'Deleted "{title}".'


def by_label(d: Draft) -> tuple[str, str] | None:
    tag = d.rng.choice(LABELS)
    text = d.pick(("Which notes are labelled {x}?", "List my notes with the label {x}."), x=tag)
    (r,) = d.step(("notes_under_label", {"label": tag}))
    titles = [f'"{n["title"]}"' for n in r["notes"]]
    return text, f"Labelled {tag}: {', '.join(titles)}." if titles else f"No note is labelled {tag}."


def note_follow_up(d: Draft) -> tuple[str, str] | None:
    nid = d.memory["note"]
    d.remember("note", nid)
    if d.rng.random() < 0.5:
        tag = d.rng.choice(LABELS)
        text = d.pick(("Also label it {x}.", "Tag that note as {x} too."), x=tag)
        d.step(("add_note_label", {"note_id": nid, "label": tag}))
        return text, f"{nid} is labelled {tag}."
    extra = d.rng.choice(TEXTS)
    text = d.pick(('Add "{x}" to that note as well.', 'Then append "{x}" to it.'), x=extra)
    d.step(("extend_note", {"note_id": nid, "text": extra}))
    return text, f"Added it to {nid}."


# -- registry -----------------------------------------------------------------------------------------

INITIAL_STATES: dict[str, Callable[[random.Random], dict[str, Any]]] = {
    WAREHOUSE: initial_stockroom, ROOM_DESK: initial_room_desk, LEDGER: initial_ledger, NOTEBOOK: initial_notebook}
INTENTS: dict[str, tuple[Intent, ...]] = {
    WAREHOUSE: (stock_check, receive, pick, move_bin, reorder),
    ROOM_DESK: (reserve, reserve_by_size, schedule, cancel_by_host),
    LEDGER: (balance, deposit, transfer, freeze, entries),
    NOTEBOOK: (write, append, label, read, trash, by_label),
}
# follow-ups: (memory key they need, intent)
FOLLOW_UPS: dict[str, tuple[tuple[str, Intent], ...]] = {
    WAREHOUSE: (("item", pick_follow_up),),
    ROOM_DESK: (("booking", move_booking), ("booking", cancel_booking_follow_up)),
    LEDGER: (("account", deposit_follow_up), ("account", balance_follow_up)),
    NOTEBOOK: (("note", note_follow_up),),
}
