"""Each half of the relay run on its own (`mta-lite smtpd`, `mta-lite qmgr`, the systemd
units) loads its own code only: the receiving half none of the delivering half's (the
smarthost client, aiosmtplib, the email header machinery) and the other way round
(docs/benchmark.md, "Memory"). The master preloads both, and every module its children
import later is on a preload list."""

import json
import subprocess
import sys

PROBE = "import sys, json, {module}\nprint(json.dumps(sorted(sys.modules)))"
DELIVERING = ("mta_lite.qmgr", "mta_lite.smarthost", "aiosmtplib", "email._header_value_parser")
RECEIVING = ("mta_lite.smtpd", "mta_lite.postscreen.service", "mta_lite.postscreen.engine")


def loaded(module: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(module=module)], capture_output=True, text=True,
                         check=True)
    return set(json.loads(out.stdout))


def _of(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(name for name in modules if name in packages or name.startswith(tuple(p + "." for p in packages)))


def test_the_receiving_half_loads_no_delivering_code():
    assert _of(loaded("mta_lite.process.smtpd_service"), DELIVERING) == []


def test_the_delivering_half_loads_no_receiving_code():
    assert _of(loaded("mta_lite.process.qmgr_service"), RECEIVING) == []


def test_the_preload_lists_hold_both_halves():
    from mta_lite.process import privsep
    names = {name for names in privsep.PRELOADS for name in names}
    assert {"mta_lite.process.smtpd_service", "mta_lite.process.qmgr_service", "mta_lite.process.runner"} <= names
