"""Hypothesis settings for the fuzz tests, with the saved corpus in tests/fuzz/corpus/.

Two profiles, chosen by $HYPOTHESIS_PROFILE:

    mta-ci    (default; `make test`) a few hundred examples per test; the committed corpus is
              replayed read-only, so a test run never changes the working tree
    fuzz      (`make fuzz`) $FUZZ_EXAMPLES examples per test (default 20000); new failures and
              the pareto front of each test's target() scores are written to the corpus, to be
              reviewed and committed like code

The profiles are applied per test with fuzz_settings(), never loaded globally: the unit tests'
own @settings and their examples stay out of this corpus.
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase, ReadOnlyDatabase

CORPUS = Path(__file__).resolve().parent / "corpus"
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "mta-ci")
LONG = PROFILE == "fuzz"
LONG_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "20000"))

_corpus = DirectoryBasedExampleDatabase(str(CORPUS))
_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("mta-ci", database=ReadOnlyDatabase(_corpus), **_common)
settings.register_profile("fuzz", database=_corpus, max_examples=LONG_EXAMPLES, **_common)


def fuzz_settings(examples: int, long_examples: int | None = None, **overrides) -> settings:
    """The active profile with `examples` for `make test`; `long_examples` (default
    $FUZZ_EXAMPLES) for `make fuzz`, for tests whose examples are expensive."""
    profile = settings.get_profile("fuzz" if LONG else "mta-ci")
    count = (long_examples or LONG_EXAMPLES) if LONG else examples
    return settings(profile, max_examples=count, **overrides)
