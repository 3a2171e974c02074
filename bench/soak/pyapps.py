"""A Python app of the soak: a ledger job whose postprocess hook runs in a child process
for a moment (so a kill can find the hook child).  ``sync(site, ledger_dir)`` writes it
into a site's apps/."""
from __future__ import annotations

from pathlib import Path

from spoolbalsam.api import ApplicationDefinition

from ledger import END, START


class LedgerPost(ApplicationDefinition):
    command_template = START + "; " + END
    environment_variables = {}

    def postprocess(self):
        import time
        time.sleep(0.3)
        self.job.data = {"post": "done"}


def sync(site: Path, ledger_dir: Path) -> None:
    LedgerPost.site = str(site)
    LedgerPost.environment_variables = {"LEDGER": str(ledger_dir)}
    LedgerPost.sync()
