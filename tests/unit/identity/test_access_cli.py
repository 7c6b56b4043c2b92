"""`intelbus access`: seeding is idempotent and keeps passwords private; row policies follow the entitlement."""
from __future__ import annotations

import json
import os
import stat

from identity.access_cli import row_policies, seed
from identity.store import PrincipalStore
from ops.settings import REPO_ROOT


def test_seed_adds_once_and_keeps_the_passwords_in_a_private_file(tmp_path):
    store = PrincipalStore(tmp_path / "principals.db")
    demo = REPO_ROOT / "ops" / "identity" / "demo-principals.yaml"
    first = seed(store, demo, tmp_path / "pw.json", actor="t", out=lambda m: None)
    again = seed(store, demo, tmp_path / "pw.json", actor="t", out=lambda m: None)
    assert first == again and {"hb-cc", "xl-ztry"} <= set(first)
    assert stat.S_IMODE(os.stat(tmp_path / "pw.json").st_mode) == 0o600
    assert store.authenticate("js-analyst", first["js-analyst"]).region == "320000"
    assert len([c for c in store.pending_changes() if c[3] == "add"]) == len(store.list())
    assert json.loads((tmp_path / "pw.json").read_text()) == first


def test_row_policies_use_the_entitlement_s_predicates(tmp_path):
    from identity.entitlement import Entitlement
    from identity.principals import Identity
    from schemas.regions import load_regions

    store = PrincipalStore(tmp_path / "principals.db")
    store.add(actor="t", name="js", kind="person", region="320000", roles=["analyst"], password="x" * 12)
    store.add(actor="t", name="aud", kind="person", region="110000", roles=["auditor"], password="x" * 12)
    out = row_policies(store, database="intelbus")
    assert out[0] == "CREATE ROLE IF NOT EXISTS agency_320000_internal"  # the auditor reads no data: no policy
    expected = Entitlement(Identity(name="x", kind="person", region="320000", branch="", roles=frozenset({"analyst"}),
                                    clearance="INTERNAL"), load_regions()).sql_scopes("320000")["hits"]
    assert any(s.startswith("CREATE ROW POLICY IF NOT EXISTS agency_320000_internal_hits ON intelbus.hits FOR SELECT "
                            f"USING {expected}") for s in out)
    assert not any("110000" in s for s in out)
