"""The ledger's Redis key layout, in one place, under the application's prefix.

Scripts touch several keys of one entry at once; they are not written for Redis
Cluster (keys are not hash-tagged).
"""

from __future__ import annotations

from dataclasses import dataclass

# Roughly how many completion events the stream keeps; readers that fall further
# behind than this re-read the entry instead.
COMPLETIONS_MAXLEN = 100_000


@dataclass(frozen=True, slots=True)
class LedgerKeys:
    prefix: str  # e.g. "orders:"
    entry_word: str = "entry"  # e.g. "order": keys read orders:order:<id>

    def entry(self, key: str) -> str:
        """The hash that is one input's memory across redeliveries."""
        return f"{self.prefix}{self.entry_word}:{key}"

    @property
    def completions(self) -> str:
        """The stream workers announce outcomes and failures on."""
        return f"{self.prefix}completions"

    def task_starts(self, task_id: str) -> str:
        return f"{self.prefix}task-starts:{task_id}"
