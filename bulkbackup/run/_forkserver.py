"""Imported by `run`'s multiprocessing fork server, and by nothing else (its preload).

Each worker holds a copy of the fork server's "parent alive" pipe, so the fork server does not
notice its parent's death while workers live, and workers, whose parent it is, would not
notice either. Killed with its parent, it lets them notice at once (their own parent-death
signal, os.getppid()) and give their users back.
"""

import signal

from bulkbackup.run.parentdeath import set_parent_death_signal

set_parent_death_signal(signal.SIGKILL)
