"""A relay without [oauth] never loads the token endpoint's code (oauthlib, urllib.request):
the daemons' modules and the preloads of the master and its children leave it out (docs/benchmark.md, Memory)."""

import subprocess
import sys

PROBE = """
import sys
from mta_lite.process import services, master, privsep  # the demo's module, both halves
for names in (privsep.SHARED_PRELOAD, privsep.SMTPD_PRELOAD, privsep.QMGR_PRELOAD):
    privsep.preload(names)
print(sorted(m for m in sys.modules if m.split('.')[0] == 'oauthlib' or m in (
    'urllib.request', 'http.client', 'mta_lite.smarthost.oauth.grants', 'mta_lite.smarthost.oauth.http')))
"""


def test_the_daemons_code_loads_no_oauth_endpoint_machinery():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_load_endpoint_code_brings_it_in():
    probe = ("import sys\nfrom mta_lite.smarthost.oauth.tokens import load_endpoint_code\n"
             "load_endpoint_code()\nprint('oauthlib' in sys.modules, 'urllib.request' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]
