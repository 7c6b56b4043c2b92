"""intelbus's services run in the stack directory; its folders must not shadow intelbus's packages."""
from __future__ import annotations

import subprocess


def test_a_stack_folder_named_like_a_package_does_not_shadow_it(tmp_path):
    from ops.services import services
    from ops.settings import load_settings

    (tmp_path / "identity" / "keys").mkdir(parents=True)  # as .stack/identity/keys/ holds key files
    argv, _ = services(load_settings(environ={"INTELBUS_STACK_DIR": str(tmp_path)}))[0].command()
    probe = "import identity.keys as k; print(hasattr(k, 'keys_path'))"
    ok = subprocess.run([argv[0], "-P", "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    shadowed = subprocess.run([argv[0], "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert argv[1] == "-P" and ok.stdout.strip() == "True"
    assert shadowed.stdout.strip() == "False"  # what a service without -P imported: the empty folder
