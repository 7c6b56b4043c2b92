"""A deterministic simulator of several regions' traffic, with its ground truth.

Every hit it expects is there by construction: wanted persons and watched plates appear
only where the simulator puts them, case incidents get fresh suspects and phones except
where a link is injected, and the population that fills identity checks holds no wanted
person. The records are in the integrators' JSON format (what `intelbus publish` reads).

Publication runs in phases, so that what must be known before a sighting is on the bus
first: (1) listings and watches, (2) traffic with sightings, (3) closings (arrests,
cancellations, late older revisions), (4) traffic again, where sightings of closed records
must give no hit. Sightings are judged by event time, as the matcher judges them.

Case reports carry a place (lat/lon near their region's centre), and a few incidents are
reported twice, by two agencies on either side of a border (Jizhou and Xinglong, Pinggu and
Jizhou), minutes and 1-3 km apart with the same suspect and phone. The truth's border
duplicates are not injected one by one: once every record is made, every pair of case
reports that share an identifier is judged by the rule (`_border_duplicates`, written here
apart from the stream jobs' own), so accidental ones in the random traffic count too.
"""
from __future__ import annotations

import math
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
# Approximate centres (lat, lon) of DEFAULT_REGIONS (gateway/static/places.csv): case reports
# are placed around them. A region without one gets reports without a place.
CENTRES = {
    "110105": (39.921, 116.486), "110108": (39.960, 116.298), "110112": (39.902, 116.657), "110117": (40.141, 117.121),
    "120101": (39.118, 117.195), "120114": (39.384, 117.044), "120119": (40.046, 117.408), "130822": (40.418, 117.501),
    "131002": (39.520, 116.694), "131022": (39.438, 116.299), "320281": (31.910, 120.285), "320500": (31.299, 120.585),
    "433125": (28.699, 109.660), "411425": (34.400, 115.863), "440300": (22.543, 114.058),
}
# Two agencies on either side of a border, and a point on it: where incidents get reported twice.
BORDERS = (("120119", "130822", (40.230, 117.450)),   # Jizhou (Tianjin) | Xinglong (Hebei)
           ("110117", "120119", (40.100, 117.280)))   # Pinggu (Beijing) | Jizhou (Tianjin)
# The border-duplicate rule (DOMAIN.md 5 and 10), as the jobs' defaults
DUPLICATE_WINDOW_MS = 30 * 60_000
DUPLICATE_KM = 5.0


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
    border_duplicate_rate: float = 0.01  # share of case incidents reported by two agencies across a border
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


def _km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance (haversine, mean Earth radius 6371 km)."""
    (lat1, lon1), (lat2, lon2) = a, b
    h = math.sin(math.radians(lat2 - lat1) / 2) ** 2 + \
        math.cos(math.radians(lat1)) * math.cos(math.radians(lat2)) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * 6371.0 * math.atan2(math.sqrt(h), math.sqrt(1 - h))


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
        self._reports: list[dict] = []  # every case report made, for the border-duplicate truth
        # places and border incidents draw from their own generator, so the rest of the
        # traffic is what the seed gave before places existed
        self._geo = random.Random(f"geo-{cfg.seed}")
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
        tries = 0
        while True:
            region = rng.choice(self.cfg.regions)
            if tries < 50:
                birth = datetime(1950, 1, 1) + timedelta(days=rng.randrange(0, 365 * 55))
            else:  # the seed's 301,125 IDs born 1950-2004 nearly used up (about 1.25 million records): older births
                birth = datetime(1800, 1, 1) + timedelta(days=rng.randrange(0, 365 * 150))
            tries += 1
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
        self._border_duplicates()

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
        end = self._seq + n
        while self._seq < end:
            if self._recent and rng.random() < cfg.duplicate_rate:
                original = rng.choice(self._recent[-1000:])
                self.truth.duplicates += 1
                yield SimRecord(original.kind, original.record, duplicate=True, phase=phase)
                self._tick()
                continue
            if rng.random() < cfg.invalid_rate:
                self.truth.invalid += 1
                yield self._invalid(phase)
                self._tick()
                continue
            roll = rng.random()
            if roll < 0.65:
                yield self._identity_check(phase)
            elif roll < 0.77:
                yield self._traffic_stop(phase)
            elif roll < 0.95:
                if self._seq + 2 <= end and self._geo.random() < cfg.border_duplicate_rate:
                    yield from self._border_pair(phase)  # two records (it ticks between them)
                else:
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
        rec = self._case_record(region, occurred, itype, suspect, phone, self._place_near(region))
        self._link_case(rec, phone)
        if linked is None and not backdated:
            self._case_pool.append(f"PHONE:{phone}")
        return self._emit("incident", rec, phase)

    def _case_record(self, region: str, occurred: int, itype: str, suspect: dict, phone: str, place,
                     located_in: str | None = None) -> dict:
        location = {"region": located_in or region}
        if place is not None:
            location["lat"], location["lon"] = place
        rec = {**self._envelope("incident", region, f"{self.cfg.ref_prefix}AJ{region}{self._seq:08d}", occurred=occurred),
               "incident_type": itype, "case_no": f"A{region}{self._seq:010d}", "title": f"{itype.lower()} case",
               "location": location, "persons": [suspect], "phones": [phone]}
        if place is not None:
            self._reports.append({"record": rec, "key": self._key(rec), "event_id": self._event_id(rec), "source": region,
                                  "occurred": occurred, "place": place,
                                  "ids": (f"RESIDENT_ID:{suspect['id_number']}", f"PHONE:{phone}")})
        return rec

    def _link_case(self, rec: dict, phone: str) -> None:
        """Expect a CASE_LINK with every earlier case of another region (where it happened) within 30 days."""
        region, occurred = rec["location"]["region"], self._ms(rec["occurred_at"])
        ident = f"PHONE:{phone}"
        entry = {"key": self._key(rec), "region": region, "occurred": occurred, "event_id": self._event_id(rec)}
        for earlier in self._case_ids.get(ident, []):
            if earlier["region"] != region and abs(earlier["occurred"] - occurred) <= 30 * DAY_MS:
                first, second = sorted((earlier, entry), key=lambda e: (e["occurred"], e["event_id"]))
                trigger = {"source_region": second["key"].split("/")[0], "source_system": SYSTEMS["incident"],
                           "source_ref": second["key"].split("/", 2)[2], "revision": 1}
                self._expect("CASE_LINK", first["key"], first["region"], trigger, second["region"], "PHONE", phone)
        self._case_ids.setdefault(ident, []).append(entry)

    @staticmethod
    def _ms(iso: str) -> int:
        return round(datetime.fromisoformat(iso).timestamp() * 1000)

    def _place_near(self, region: str):
        """Within about 17 km of the region's centre (None for a region without one)."""
        centre = CENTRES.get(region)
        if centre is None:
            return None
        return (round(centre[0] + self._geo.uniform(-0.15, 0.15), 6), round(centre[1] + self._geo.uniform(-0.2, 0.2), 6))

    def _border_pair(self, phase: int) -> Iterator[SimRecord]:
        """One incident on a border reported by the agencies of both sides: the same suspect and
        phone, the second report 1-20 minutes before or after and 1-3 km from the first; its
        place named as its own region or as the first's (then it is no case link)."""
        geo = self._geo
        first_region, second_region, (lat, lon) = geo.choice(BORDERS)
        if geo.random() < 0.5:
            first_region, second_region = second_region, first_region
        here = (round(lat + geo.uniform(-0.01, 0.01), 6), round(lon + geo.uniform(-0.01, 0.01), 6))
        km, bearing = geo.uniform(1.0, 3.0), geo.uniform(0, 2 * math.pi)
        there = (round(here[0] + km / 111.2 * math.cos(bearing), 6),
                 round(here[1] + km / (111.2 * math.cos(math.radians(here[0]))) * math.sin(bearing), 6))
        occurred = self.t
        later = occurred + geo.choice((-1, 1)) * geo.randint(1, 20) * 60_000
        located_in = second_region if geo.random() < 0.5 else first_region
        suspect_id, phone, itype = self._new_person_id(), self._fresh_phone(), geo.choice(CASE_TYPES)
        first = self._case_record(first_region, occurred, itype, self._person(suspect_id, "SUSPECT"), phone, here)
        self._link_case(first, phone)
        yield self._emit("incident", first, phase)
        self._tick()
        second = self._case_record(second_region, later, geo.choice(CASE_TYPES), self._person(suspect_id, "SUSPECT"),
                                   phone, there, located_in)
        self._link_case(second, phone)
        yield self._emit("incident", second, phase)

    def _border_duplicates(self) -> None:
        """Expect a BORDER_DUPLICATE for every pair of case reports made that share an identifier,
        were published by regions neither of which is inside the other, happened at most 30
        minutes and 5 km apart. Brute force over every pair sharing an identifier: no window,
        no bound, no order of arrival, none of the stream jobs' code."""
        by_identifier: dict[str, list[int]] = {}
        for n, r in enumerate(self._reports):
            for ident in r["ids"]:
                by_identifier.setdefault(ident, []).append(n)
        pairs: dict[tuple[int, int], str] = {}
        for ident, members in by_identifier.items():
            for i, a in enumerate(members):
                for b in members[i + 1:]:
                    pairs.setdefault((a, b), ident)
        for (a, b), ident in pairs.items():
            ra, rb = self._reports[a], self._reports[b]
            if is_within(ra["source"], rb["source"]) or is_within(rb["source"], ra["source"]):
                continue
            if abs(ra["occurred"] - rb["occurred"]) > DUPLICATE_WINDOW_MS or _km(ra["place"], rb["place"]) > DUPLICATE_KM:
                continue
            first, second = sorted((ra, rb), key=lambda r: (r["occurred"], r["event_id"]))
            kind, value = ident.split(":", 1)
            self._expect("BORDER_DUPLICATE", first["key"], first["source"], second["record"], second["source"], kind, value)

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

    def _invalid(self, phase: int = 2) -> SimRecord:
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
        # the phase of the traffic it is part of: a phase change makes `--settle` wait for the jobs
        return SimRecord("incident", rec, invalid=True, phase=phase)

