//! The PostgreSQL schema: the same tables and columns as SQLite's (after
//! all its migrations), in PostgreSQL's types, plus `lender_leader` (the
//! epoch that fences a former leader's writes). `lender_schema` holds how
//! many migrations were applied. Append, never edit.

pub(super) const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE agents (
    name          TEXT PRIMARY KEY,
    labels        TEXT NOT NULL,    -- JSON array of strings
    place_url     TEXT,             -- NULL: at home
    busy          BOOLEAN NOT NULL,
    idle_since_ms BIGINT,
    last_seen_ms  BIGINT NOT NULL,
    last_lent_ms  BIGINT
);
CREATE TABLE leases (
    id              BIGINT PRIMARY KEY,
    state           TEXT NOT NULL,  -- queued, reserved, active, returning, ended
    state_detail    TEXT,           -- JSON: the return cause or end reason
    agent           TEXT,
    requirements    TEXT NOT NULL,  -- canonical label expression
    borrower_url    TEXT NOT NULL,
    borrower_node   TEXT NOT NULL,
    borrower_secret TEXT,           -- NULL once ended
    transport       TEXT,           -- tcp, web_socket or NULL
    client          TEXT NOT NULL,
    lease_ms        BIGINT,
    idle_return_ms  BIGINT,
    wait_ms         BIGINT NOT NULL,
    requested_ms    BIGINT NOT NULL,
    deadline_ms     BIGINT NOT NULL,
    since_ms        BIGINT NOT NULL,
    attempts        TEXT NOT NULL,  -- JSON array of {agent, reason, at_ms}
    origin          TEXT            -- JSON: an auto-lease's controller and queue item
);
CREATE INDEX leases_by_state ON leases (state, id);
CREATE INDEX leases_by_client ON leases (client, id);
CREATE TABLE audit (
    id     BIGSERIAL PRIMARY KEY,
    at_ms  BIGINT NOT NULL,
    lease  BIGINT,
    agent  TEXT,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE tokens (
    seq          BIGSERIAL,        -- creation order among equal created_ms
    hash         TEXT PRIMARY KEY, -- hex SHA-256 of the token; the token itself is never stored
    kind         TEXT NOT NULL,    -- agent or client
    name         TEXT NOT NULL,
    created_ms   BIGINT NOT NULL,
    last_used_ms BIGINT,           -- to the minute
    revoked_ms   BIGINT            -- NULL: valid
);
CREATE INDEX tokens_by_name ON tokens (name);
CREATE TABLE controllers (
    name      TEXT PRIMARY KEY,
    url       TEXT NOT NULL,
    "user"    TEXT NOT NULL,
    api_token TEXT NOT NULL,       -- like borrower secrets: never returned, logged or in an event
    options   TEXT NOT NULL,       -- JSON: ControllerOptions
    added_ms  BIGINT NOT NULL
);
CREATE TABLE lender_leader (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    epoch    BIGINT NOT NULL,      -- bumped at each takeover; every write checks it
    holder   TEXT,
    since_ms BIGINT
);
INSERT INTO lender_leader (id, epoch) VALUES (1, 0);
"#];

/// The advisory lock (transaction scope) that serialises migrations of
/// lenders starting together.
pub(super) const MIGRATION_LOCK: i64 = 0x6a6e_6c70_0001;
/// The advisory lock (session scope) the active lender holds.
pub(super) const LEADER_LOCK: i64 = 0x6a6e_6c70_0002;
