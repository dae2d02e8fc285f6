"""Every Redis key name of the project, in one place (see DESIGN.md)."""

HOST = "github.com"
TRACKED = "tracked"
# Claimed users: lease expiry (server time) and the score each had before its claim.
LEASES = "bulkbackup:leases"
CLAIMS = "bulkbackup:claims"
# Last SyncdRepos value written per user by the stats pass, so it writes only changes.
SYNCD = "bulkbackup:syncd"
# Failed attempts (store or Redis errors, rate limits) per member since its last sync
# (see complete.lua).
FAILURES = "bulkbackup:failures"
# Members a run gave up on after run.max_attempts failures: its claims skip them (a set per
# run, named by the run's start; it expires).
DEFERRED_PREFIX = "bulkbackup:deferred:"
DEFERRED_TTL_S = 7 * 24 * 3600
# Figures of the last run and the last stats pass (a hash).
LAST_RUN = "bulkbackup:lastrun"
LAST_STATS = "bulkbackup:laststats"
# Figures of the last verify pass, and totals of all passes (a hash; `stats` reports them).
LAST_VERIFY = "bulkbackup:lastverify"
# Repositories with an increment committed by a run's worker since their last verify: member
# "login/repo", score the commit time (unix s). `verify --sample N` checks the oldest first;
# verify removes a member once it recorded a result for it (pending.py). Bounded: the oldest
# beyond VERIFY_PENDING_MAX are dropped (they are left to the random sample).
VERIFY_PENDING = "bulkbackup:verify:pending"
VERIFY_PENDING_MAX = 1_000_000
# Set by `run` once `tracked` is whole (checked, built or rebuilt from the store). Redis
# flushed, or restarted without persistence, loses it: the run then rebuilds `tracked`.
INTACT = "bulkbackup:intact"
# GitHub logins ignore case: lowercased login -> the login as tracked and stored (a hash),
# for every tracked or stored login that is not all lowercase (a lowercase login is its own
# entry: ZSCORE tracked answers for it). Kept by track.lua (track, ingest, POST /api/users)
# and `rebuild`; read by `track` and `serve` (logins.py).
LOGINS = "bulkbackup:logins"
# Prefix search of logins (serve's `?q=`): every tracked login, lowercased, in a sorted set
# whose scores are all 0, so ZRANGEBYLEX answers a prefix in O(log N + page). Kept by
# track.lua (track, ingest, POST /api/users) and `rebuild` (which also adds every member of
# `tracked` and then sets SEARCH_WHOLE). Without SEARCH_WHOLE (never rebuilt since the index
# exists, or Redis lost it) serve searches the store instead, one page.
SEARCH = "bulkbackup:search"
SEARCH_WHOLE = "bulkbackup:search:whole"

MEMBER_PREFIX = HOST + "/"
LOCK_PREFIX = "lock:"


def member(login: str) -> str:
    return MEMBER_PREFIX + login


def login_of(member_name: str) -> str:
    return member_name.removeprefix(MEMBER_PREFIX)


def lock(member_name: str) -> str:
    return LOCK_PREFIX + member_name


def deferred(run_start: float) -> str:
    return f"{DEFERRED_PREFIX}{int(run_start)}"


# The quota broker (quota.py), shared by every process: per resource ("core", "graphql") and
# token hash, GitHub's last known remaining/reset (a hash), and per token hash a
# secondary-limit pause (a hash). Keys and values hold hashes of tokens, never tokens.
QUOTA_PREFIX = "bulkbackup:quota:"


def quota(resource: str, token_id: str) -> str:
    return f"{QUOTA_PREFIX}{resource}:{token_id}"


def quota_pause(token_id: str) -> str:
    return f"{QUOTA_PREFIX}pause:{token_id}"


# -- the web server's figures (bulkbackup serve) ----------------------------------------------
# Per-minute counters, a hash per minute (fields users, repos, bytes), incremented by
# complete.lua for each synced user; named by the minute (Redis server time // 60).
RATE_PREFIX = "bulkbackup:rate:"
RATE_TTL_S = 2 * 3600
# Worker heartbeats: a sorted set worker id -> last seen (unix s), and per worker a string
# (JSON figures) that expires on its own; both written by the lock refresher thread.
WORKERS = "bulkbackup:workers"
WORKER_PREFIX = "bulkbackup:worker:"
WORKER_TTL_S = 60


def rate(minute: int) -> str:
    return f"{RATE_PREFIX}{minute}"


def worker(worker_id: str) -> str:
    return WORKER_PREFIX + worker_id


# -- events (bulkbackup events: GH Archive's hours read as marks; queue/events.py) -------------
# Priority users (the seed's plus-users: signed in with GitHub on serve's page): member the
# `tracked` member, score when it is next due (unix s; sign-in sets now). Claimed before
# everyone else once due; a sync sets it serve.priority_hours ahead (complete.lua).
PRIORITY = "bulkbackup:priority"

EVENTS_PREFIX = "bulkbackup:events:"
# Hours read whole: member the hour's name (2015-01-01-15), score its start (unix s). An hour
# here is never read again (an hour read twice changes nothing more). ~8 760 a year.
EVENTS_HOURS = EVENTS_PREFIX + "hours"
# Where reading stands (a hash): last_hour (the newest hour read), last_hour_start, read_at,
# lag_s (how old its newest events were when read), next_hour (where reading resumes without
# --from: after the newest hour read or skipped), last_gap, and totals hours, events, marks,
# bad_lines, gaps.
EVENTS_STATUS = EVENTS_PREFIX + "status"
# Owners marked due by events: member the `tracked` member, score the end of the hour of its
# first mark since its last sync (unix s; ZADD NX: the oldest mark first). A run clears it when
# it syncs the owner (phase 2).
EVENTS_DUE = EVENTS_PREFIX + "due"
# Owners whose events need a listing (a new repository, a fork, a release...): members.
EVENTS_LISTING = EVENTS_PREFIX + "listing"
# Per owner (lowercased login: logins ignore case), the repositories whose refs moved (a set),
# at most EVENTS_REFS_MAX: past that the owner needs a listing instead (one listing costs
# less than that many repositories fetched blind), and the set is dropped.
EVENTS_REFS_PREFIX = EVENTS_PREFIX + "refs:"
EVENTS_REFS_MAX = 100


def events_refs(login: str) -> str:
    return EVENTS_REFS_PREFIX + login.lower()


# -- serve's sign-in, public add and a user's history ----------------------------------------
# Public adds (serve.public_add): logins looked up on GitHub per client address (an IPv6
# address by its /64) and hour (unix s // 3600), a counter that expires after its hour.
PUBLIC_ADD_PREFIX = "bulkbackup:publicadd:"
PUBLIC_ADD_TTL_S = 3600 + 60


def public_add(address: str, hour: int) -> str:
    return f"{PUBLIC_ADD_PREFIX}{hour}:{address}"


# A user's last syncs (the seed's /user/<user>/log): a list per user (lowercased login:
# logins ignore case), newest first, at most HISTORY_MAX entries (queue/history.py: syncs in
# a row that archived and failed nothing are one entry, lua/history_record.lua). It
# expires HISTORY_TTL_S after its last write: a user no longer synced lets it go.
HISTORY_PREFIX = "bulkbackup:log:"
HISTORY_MAX = 50
HISTORY_TTL_S = 400 * 86400


def history(login: str) -> str:
    return HISTORY_PREFIX + login.lower()


# A claimed user's marks, taken aside at its claim (claim.lua, lua/marks.lua) so that events
# marking it during its sync make a fresh mark: a hash (due: its events:due score; listing: 1
# when it needed a listing; priority: its bulkbackup:priority score, parked at +inf while
# claimed) and a set (the repositories of its events:refs set, renamed here). A give back puts
# them back (merged with fresh marks, the older due score kept); a sync deletes them.
TAKEN_PREFIX = "bulkbackup:taken:"
TAKEN_REFS_PREFIX = "bulkbackup:taken-refs:"


def taken(member_name: str) -> str:
    return TAKEN_PREFIX + member_name


def taken_refs(member_name: str) -> str:
    return TAKEN_REFS_PREFIX + member_name


# A listing one `run` worker made and handed over with its user (given back for another worker
# to sync: run/listing_share.py), per `tracked` member: orjson {"at": when listed (server
# time), "listing": OwnerListing.to_json}. Taken (read and deleted) by the worker that claims
# the user next (lua/listing_take.lua); expires after run.listing_cache_s.
LISTING_PREFIX = "bulkbackup:listing:"


def listing(member_name: str) -> str:
    return LISTING_PREFIX + member_name


# -- remote workers (issue 23: the lease API of `serve`; queue/worker_tokens.py) --------------
# Worker tokens: name -> JSON {hash, created, last_used} (a hash). Never a token: its sha256.
WORKER_TOKENS = "bulkbackup:worker-tokens"
# The index by hash: sha256 hex of a token -> its name (a hash), what each request looks up.
WORKER_TOKEN_HASHES = "bulkbackup:worker-tokens:by-hash"  # noqa: S105 - a key name
# Per token name, the members it holds a lease on right now (a set; kept by the lease API:
# added at a claim, removed at completion or give-back; a lapsed lease's member stays until
# the token's next lease call prunes it). What `worker-token revoke` gives back at once.
WORKER_LEASES_PREFIX = "bulkbackup:worker-tokens:leases:"
# Per token name, the members it archived (synced) while the token lived (a set; added by
# the lease API at each synced completion): what `worker-token revoke --redo` makes due
# again. At most the number of tracked users; dropped by the revoke.
WORKER_ARCHIVED_PREFIX = "bulkbackup:worker-tokens:archived:"


def worker_leases(name: str) -> str:
    return WORKER_LEASES_PREFIX + name


def worker_archived(name: str) -> str:
    return WORKER_ARCHIVED_PREFIX + name
