"""Every Redis key name of the project, in one place (see DESIGN.md)."""

HOST = "github.com"
TRACKED = "tracked"
# Claimed users: lease expiry (server time) and the score each had before its claim.
LEASES = "bulkbackup:leases"
CLAIMS = "bulkbackup:claims"
# Last SyncdRepos value written per user by the stats pass, so it writes only changes.
SYNCD = "bulkbackup:syncd"
# Failed attempts (store or Redis errors) per member in the current run; see complete.lua.
FAILURES = "bulkbackup:failures"
# Figures of the last run and the last stats pass (a hash).
LAST_RUN = "bulkbackup:lastrun"
LAST_STATS = "bulkbackup:laststats"

MEMBER_PREFIX = HOST + "/"
LOCK_PREFIX = "lock:"


def member(login: str) -> str:
    return MEMBER_PREFIX + login


def login_of(member_name: str) -> str:
    return member_name.removeprefix(MEMBER_PREFIX)


def lock(member_name: str) -> str:
    return LOCK_PREFIX + member_name
