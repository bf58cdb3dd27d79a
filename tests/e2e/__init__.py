"""Browser tests of the questionnaire page (`app/static`): headless Chromium against the real service.

They need Debian's Chromium at `HHVAEM_E2E_CHROMIUM` (default `/usr/bin/chromium`; `apt-get install -y chromium`) and
are skipped without it. Playwright drives that browser; `playwright install` is never needed.
"""

from __future__ import annotations

import os

CHROMIUM = os.environ.get("HHVAEM_E2E_CHROMIUM", "/usr/bin/chromium")
HAVE_CHROMIUM = os.access(CHROMIUM, os.X_OK)
SKIP_REASON = f"no Chromium at {CHROMIUM} (install it: apt-get install -y chromium)"
