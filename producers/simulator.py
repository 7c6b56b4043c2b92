"""A deterministic simulator of several regions' traffic, with its ground truth.

Every hit it expects is there by construction: wanted persons and watched plates appear
only where the simulator puts them, case incidents get fresh suspects and phones except
where a link is injected, and the population that fills identity checks holds no wanted
person. The records are in the integrators' JSON format (what `intelbus publish` reads).

Publication runs in phases, so that what must be known before a sighting is on the bus
first: (1) listings and watches, (2) traffic with sightings, (3) closings (arrests,
cancellations, late older revisions), (4) traffic again, where sightings of closed records
must give no hit. Sightings are judged by event time, as the matcher judges them.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Iterator

from schemas.ids import derive_event_id, hit_id
from schemas.normalise import resident_id_check_digit

CST = timezone(timedelta(hours=8))
DAY_MS = 86_400_000

# Regions events happen in: districts and counties of DOMAIN.md and a few more.
DEFAULT_REGIONS = (
    "110105", "110108", "110112", "110117", "120101", "120114", "120119",
    "130822", "131002", "131022", "320281", "320500", "433125", "411425", "440300",
)
SYSTEMS = {"alert": "xczx", "wanted": "ztry", "incident": "jwzh"}  # 协查中心, 在逃人员, 警务综合
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华建国"
PLATE_PREFIX = {"11": "京", "12": "津", "13": "冀", "32": "苏", "43": "湘", "41": "豫", "44": "粤"}
CHECK_TYPES = ("CHECKPOINT_CHECK", "HOTEL_CHECKIN", "RESIDENCE_REGISTRATION")
CASE_TYPES = ("THEFT", "FRAUD", "ROBBERY", "DRUGS", "ASSAULT")


@dataclass(frozen=True)
class SimConfig:
    seed: int = 1
    count: int = 10_000              # records to publish, duplicates and invalid ones included
    population: int = 20_000
    wanted: int = 150
    watches: int = 80
    sighting_rate: float = 0.03      # share of checks and stops carrying a wanted person or watched plate
    case_link_rate: float = 0.05     # share of case incidents that reuse an earlier case's phone or plate
    duplicate_rate: float = 0.03
    invalid_rate: float = 0.002
    regions: tuple[str, ...] = DEFAULT_REGIONS
    start_ms: int | None = None      # event time of the first record (default: now)
    step_ms: int = 50                # event time between consecutive records
    ref_prefix: str = ""             # prepended to every source_ref: separates runs on one bus


@dataclass(frozen=True)
class SimRecord:
    kind: str
    record: dict
    duplicate: bool = False
    invalid: bool = False   # refused by validation: never reaches the bus
    phase: int = 2


@dataclass
class Truth:
    hits: dict[str, dict] = field(default_factory=dict)   # hit_id -> expected hit
    events: int = 0            # distinct valid events
    duplicates: int = 0        # resends of valid events
    invalid: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    ref_prefix: str = ""

    def summary(self) -> dict:
        return {"type": "summary", "ref_prefix": self.ref_prefix, "distinct_events": self.events, "duplicates": self.duplicates,
                "invalid": self.invalid, "hits": len(self.hits), "by_kind": self.by_kind,
                "hits_by_type": _count(h["hit_type"] for h in self.hits.values())}


def _count(items) -> dict:
    out: dict = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=CST).isoformat(timespec="milliseconds")


def is_within(code: str, other: str) -> bool:
    """code is other or inside it (by the code's structure: XX0000 province, XXYY00 city)."""
    if code == other:
        return True
    if other.endswith("0000"):
        return code[:2] == other[:2]
    if other.endswith("00"):
        return code[:4] == other[:4]
    return False


class Simulation:
    def __init__(self, cfg: SimConfig):
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.t = cfg.start_ms if cfg.start_ms is not None else int(datetime.now(tz=timezone.utc).timestamp() * 1000)
        self.truth = Truth(ref_prefix=cfg.ref_prefix)
        self._seq = 0
        # each seed numbers its phones and plates in a block of its own, so runs with other
        # seeds on one bus never share one by chance
        self._phones = (cfg.seed % 1000) * 500_000
        self._plates = (cfg.seed % 150) * 15_000
        self._fresh_ids = 0
        self._used_ids: set[str] = set()
        self.population = [self._new_person_id() for _ in range(cfg.population)]
        self._recent: list[SimRecord] = []
        self._case_ids: dict[str, list[dict]] = {}   # identifier -> earlier case incidents carrying it
        self._case_pool: list[str] = []
        self.wanted: list[dict] = []    # {key, region, id18, given_id, rev, open, closed_at, phones}
        self.watches: list[dict] = []   # {key, region, plate}

    # --- identifiers -----------------------------------------------------------------------
    def _new_person_id(self) -> str:
        """A valid resident ID never handed out before, by this run or by a run with another seed.

        The 3-digit sequence part is the seed's (mod 1000), so runs with different seeds on one
        bus never share a person by chance (a shared person would be a real hit or link).
        """
        rng = self.rng
        seq = f"{self.cfg.seed % 1000:03d}"
        while True:
            region = rng.choice(self.cfg.regions)
            birth = datetime(1950, 1, 1) + timedelta(days=rng.randrange(0, 365 * 55))
            first17 = f"{region}{birth:%Y%m%d}{seq}"
            id18 = first17 + resident_id_check_digit(first17)
            if id18 not in self._used_ids:
                self._used_ids.add(id18)
                return id18

    def _fresh_phone(self) -> str:
        self._phones += 1
        return f"1{self.rng.choice('356789')}{self._phones + 10_000_000:09d}"

    def _fresh_plate(self, region: str) -> str:
        self._plates += 1
        letter = "ABCDEFGHJKLMNPQRSTUVWXY"[(self._plates // 100_000) % 23]
        return f"{PLATE_PREFIX.get(region[:2], '京')}{letter}{self._plates % 100_000:05d}"

    def _name(self) -> str:
        return self.rng.choice(SURNAMES) + "".join(self.rng.choice(GIVEN) for _ in range(self.rng.randint(1, 2)))

    # --- records ---------------------------------------------------------------------------
    def _envelope(self, kind: str, region: str, ref: str, revision: int = 1, occurred: int | None = None) -> dict:
        return {
            "source_region": region,
            "source_system": SYSTEMS[kind],
            "source_ref": ref,
            "revision": revision,
            "occurred_at": _iso(occurred if occurred is not None else self.t),
            "classification": self.rng.choice(("INTERNAL", "INTERNAL", "INTERNAL", "SECRET", "PUBLIC")),
        }

    def _person(self, id_number: str, role: str) -> dict:
        return {"id_type": "RESIDENT_ID", "id_number": id_number, "name": self._name(), "role": role}

    def _tick(self) -> None:
        self._seq += 1
        self.t += self.cfg.step_ms

    def _emit(self, kind: str, record: dict, phase: int) -> SimRecord:
        rec = SimRecord(kind, record, phase=phase)
        self.truth.events += 1
        self.truth.by_kind[kind] = self.truth.by_kind.get(kind, 0) + 1
        self._recent.append(rec)
        if len(self._recent) > 2000:
            del self._recent[:1000]
        return rec

    def _event_id(self, record: dict) -> str:
        return derive_event_id(record["source_region"], record["source_system"], record["source_ref"], record["revision"])

    @staticmethod
    def _key(record: dict) -> str:
        return f"{record['source_region']}/{record['source_system']}/{record['source_ref']}"

    def _expect(self, hit_type: str, record_key: str, owner: str, trigger: dict, hit_region: str, kind: str, value: str):
        trigger_id = self._event_id(trigger)
        hid = hit_id(record_key, trigger_id, hit_type)
        self.truth.hits[hid] = {"type": "hit", "hit_id": hid, "hit_type": hit_type, "record_key": record_key,
                                "trigger_event_id": trigger_id, "owner_region": owner, "hit_region": hit_region,
                                "matched_on": {"kind": kind, "value": value}}

    # --- phases ----------------------------------------------------------------------------
    def records(self) -> Iterator[SimRecord]:
        cfg = self.cfg
        yield from self._setup()
        main = max(0, int(cfg.count * 0.85) - cfg.wanted - cfg.watches)
        yield from self._traffic(main, phase=2)
        yield from self._closings()
        while self._seq < cfg.count:
            yield from self._traffic(cfg.count - self._seq, phase=4)

    def _setup(self) -> Iterator[SimRecord]:
        rng = self.rng
        for i in range(self.cfg.wanted):
            region = rng.choice(self.cfg.regions)
            id18 = self._new_person_id()
            # one in five listed with the old 15-digit number (it exists for births in 19xx only)
            given = id18[:6] + id18[8:17] if id18[6:8] == "19" and rng.random() < 0.2 else id18
            phones = [self._fresh_phone()] if rng.random() < 0.5 else []
            rec = {**self._envelope("wanted", region, f"{self.cfg.ref_prefix}ZT{region}{i:05d}"), "action": "LISTED",
                   "person": {**self._person(given, "WANTED"), "gender": rng.choice("MF")},
                   "offence": rng.choice(("THEFT", "FRAUD", "TELECOM_FRAUD", "ROBBERY", "DRUGS")),
                   "danger_level": rng.choice(("LOW", "MEDIUM", "HIGH")), "phones": phones,
                   "share_scope": ["JJJ"] if region[:2] in ("11", "12", "13") and rng.random() < 0.3 else []}
            self.wanted.append({"key": self._key(rec), "region": region, "id18": id18, "rev": 1, "open": True,
                                "record": rec, "closed_at": None, "phones": phones})
            yield self._emit("wanted", rec, 1)
            self._tick()
        for i in range(self.cfg.watches):
            region = rng.choice(self.cfg.regions)
            plate = self._fresh_plate(region)
            rec = {**self._envelope("alert", region, f"{self.cfg.ref_prefix}BK{region}{i:05d}"), "alert_type": "WATCH",
                   "title": f"布控车辆 {plate}", "priority": rng.choice(("URGENT", "CRITICAL")), "status": "OPEN",
                   "vehicles": [{"plate": plate, "color": rng.choice(("白", "黑", "银"))}]}
            self.watches.append({"key": self._key(rec), "region": region, "plate": plate})
            yield self._emit("alert", rec, 1)
            self._tick()

    def _traffic(self, n: int, phase: int) -> Iterator[SimRecord]:
        rng, cfg = self.rng, self.cfg
        for _ in range(n):
            if self._recent and rng.random() < cfg.duplicate_rate:
                original = rng.choice(self._recent[-1000:])
                self.truth.duplicates += 1
                yield SimRecord(original.kind, original.record, duplicate=True, phase=phase)
                self._tick()
                continue
            if rng.random() < cfg.invalid_rate:
                self.truth.invalid += 1
                yield self._invalid()
                self._tick()
                continue
            roll = rng.random()
            if roll < 0.65:
                yield self._identity_check(phase)
            elif roll < 0.77:
                yield self._traffic_stop(phase)
            elif roll < 0.95:
                yield self._case(phase)
            else:
                yield self._assist_request(phase)
            self._tick()

    def _identity_check(self, phase: int) -> SimRecord:
        rng = self.rng
        region = rng.choice(self.cfg.regions)
        persons = [self._person(rng.choice(self.population), "CHECKED") for _ in range(rng.randint(1, 2))]
        sighted = None
        if self.wanted and rng.random() < self.cfg.sighting_rate:
            sighted = rng.choice(self.wanted)
            if rng.random() < 0.15:
                region = sighted["region"]  # seen at home: no hit
            persons.append(self._person(sighted["id18"], "CHECKED"))
        itype = rng.choice(CHECK_TYPES)
        rec = {**self._envelope("incident", region, f"{self.cfg.ref_prefix}JQ{region}{self._seq:08d}"), "incident_type": itype,
               "title": {"CHECKPOINT_CHECK": "卡口核查", "HOTEL_CHECKIN": "旅馆登记", "RESIDENCE_REGISTRATION": "流动人口登记"}[itype],
               "location": {"region": region, "address": f"{region} 检查站"}, "persons": persons}
        if sighted and sighted["open"] and not is_within(region, sighted["region"]):
            self._expect("WANTED_PERSON", sighted["key"], sighted["region"], rec, region, "RESIDENT_ID", sighted["id18"])
        return self._emit("incident", rec, phase)

    def _traffic_stop(self, phase: int) -> SimRecord:
        rng = self.rng
        region = rng.choice(self.cfg.regions)
        plate, watched = self._fresh_plate(region), None
        if self.watches and rng.random() < self.cfg.sighting_rate * 3:
            watched = rng.choice(self.watches)
            plate = watched["plate"]
        written = plate if rng.random() < 0.5 else plate[0] + plate[1].lower() + " " + plate[2:]
        rec = {**self._envelope("incident", region, f"{self.cfg.ref_prefix}JT{region}{self._seq:08d}"), "incident_type": "TRAFFIC_STOP",
               "location": {"region": region}, "vehicles": [{"plate": written}],
               "persons": [self._person(rng.choice(self.population), "CHECKED")]}
        if watched and not is_within(region, watched["region"]):
            self._expect("WATCH_MATCH", watched["key"], watched["region"], rec, region, "PLATE", plate)
        return self._emit("incident", rec, phase)

    def _case(self, phase: int) -> SimRecord:
        rng = self.rng
        region = rng.choice(self.cfg.regions)
        phone = self._fresh_phone()
        occurred = self.t
        linked = None
        if self._case_pool and rng.random() < self.cfg.case_link_rate:
            candidate = rng.choice(self._case_pool[-500:])
            if len(self._case_ids[candidate]) < 3:
                linked, phone = candidate, candidate.split(":", 1)[1]
        backdated = linked is None and rng.random() < 0.01
        if backdated:
            occurred -= 40 * DAY_MS  # a case reported late: outside any link window
        suspect = self._person(self._new_person_id(), "SUSPECT")
        itype = rng.choice(CASE_TYPES)
        rec = {**self._envelope("incident", region, f"{self.cfg.ref_prefix}AJ{region}{self._seq:08d}", occurred=occurred), "incident_type": itype,
               "case_no": f"A{region}{self._seq:010d}", "title": f"{itype.lower()} case",
               "location": {"region": region}, "persons": [suspect], "phones": [phone]}
        ident = f"PHONE:{phone}"
        entry = {"key": self._key(rec), "region": region, "occurred": occurred, "event_id": self._event_id(rec)}
        for earlier in self._case_ids.get(ident, []):
            if earlier["region"] != region and abs(earlier["occurred"] - occurred) <= 30 * DAY_MS:
                first, second = sorted((earlier, entry), key=lambda e: (e["occurred"], e["event_id"]))
                trigger = {"source_region": second["key"].split("/")[0], "source_system": SYSTEMS["incident"],
                           "source_ref": second["key"].split("/", 2)[2], "revision": 1}
                self._expect("CASE_LINK", first["key"], first["region"], trigger, second["region"], "PHONE", phone)
        self._case_ids.setdefault(ident, []).append(entry)
        if linked is None and not backdated:
            self._case_pool.append(ident)
        return self._emit("incident", rec, phase)

    def _assist_request(self, phase: int) -> SimRecord:
        rng = self.rng
        region = rng.choice(self.cfg.regions)
        rec = {**self._envelope("alert", region, f"{self.cfg.ref_prefix}XC{region}{self._seq:08d}"), "alert_type": "ASSIST_REQUEST",
               "title": "协查通报", "description": "请协助查找", "priority": "ROUTINE", "status": "OPEN",
               "persons": [self._person(self._new_person_id(), "SUSPECT")], "phones": [self._fresh_phone()]}
        return self._emit("alert", rec, phase)

    def _closings(self) -> Iterator[SimRecord]:
        rng = self.rng
        for w in self.wanted:
            if rng.random() >= 0.3:
                continue
            action = rng.choice(("ARRESTED", "SURRENDERED", "CANCELLED"))
            w["rev"] += 2
            rec = {**w["record"], **self._envelope("wanted", w["region"], w["record"]["source_ref"], w["rev"]),
                   "action": action}
            w["open"], w["closed_at"] = False, self.t
            yield self._emit("wanted", rec, 3)
            self._tick()
            if action == "CANCELLED":  # a late UPDATED with an older revision must not reopen it
                late = {**w["record"], **self._envelope("wanted", w["region"], w["record"]["source_ref"], w["rev"] - 1),
                        "action": "UPDATED"}
                yield self._emit("wanted", late, 3)
                self._tick()

    def _invalid(self) -> SimRecord:
        rng = self.rng
        region = rng.choice(self.cfg.regions)
        good = self._new_person_id()
        bad_digit = "0123456789X"[("0123456789X".index(good[-1]) + 1) % 11]
        choice = rng.randrange(3)
        base = {**self._envelope("incident", region, f"{self.cfg.ref_prefix}BAD{self._seq:08d}"), "incident_type": "CHECKPOINT_CHECK",
                "location": {"region": region}}
        if choice == 0:
            rec = {**base, "persons": [self._person(good[:-1] + bad_digit, "CHECKED")]}
        elif choice == 1:
            rec = {**base, "titel": "typo in a field name"}
        else:
            rec = {**base, "location": {"region": "999999"}}
        return SimRecord("incident", rec, invalid=True, phase=2)

