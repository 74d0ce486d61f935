-- The chain's central database (docs/chain.md). Applied once by `proximity hq migrate`
-- (or by hq at start); never edited after release: a change is a new numbered file.

-- One row per facts batch a gateway sent: the primary key makes ingest idempotent.
CREATE TABLE batches (
    store       text        NOT NULL,
    gateway     text        NOT NULL,
    seq         bigint      NOT NULL,
    sealed_at   timestamptz NOT NULL,
    rows        integer     NOT NULL,   -- grouped rows it carried
    facts       bigint      NOT NULL,   -- the sum of their counts
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (store, gateway, seq)
);

-- The funnel, one row per minute x rule x variant x arm x stage x reason of a batch.
-- A year of a 500-store chain: 500 stores x 525,600 minutes x the rows a store's minute
-- holds (about 3-10 while open) is in the order of 10^9 rows: partitioned by month on
-- `minute` (hq creates the months it needs; the default partition catches the rest), so
-- a report over a month reads one partition and old months can be detached or dropped.
CREATE TABLE facts (
    store   text        NOT NULL,
    gateway text        NOT NULL,
    seq     bigint      NOT NULL,
    minute  timestamptz NOT NULL,
    rule    text        NOT NULL,
    variant text        NOT NULL,
    arm     text        NOT NULL,
    stage   text        NOT NULL,
    reason  text        NOT NULL,
    count   integer     NOT NULL
) PARTITION BY RANGE (minute);
CREATE TABLE facts_default PARTITION OF facts DEFAULT;
CREATE INDEX facts_store_minute ON facts (store, minute);
CREATE INDEX facts_rule_minute ON facts (rule, minute);

-- The fleet: the last status of every store's gateway (up/status).
CREATE TABLE fleet (
    store          text        NOT NULL,
    gateway        text        NOT NULL,
    last_seen      timestamptz NOT NULL,   -- when hq last heard from it (hq's clock)
    online         boolean     NOT NULL,
    version        text        NOT NULL DEFAULT '',
    rules_version  text        NOT NULL DEFAULT '',
    bundle         bigint,
    outbox_depth   bigint      NOT NULL DEFAULT 0,
    uplink_pending bigint      NOT NULL DEFAULT 0,
    errors         bigint      NOT NULL DEFAULT 0,
    status         jsonb       NOT NULL,   -- the whole status message
    PRIMARY KEY (store, gateway)
);

-- Every rollout report (up/rollout), and the latest per store.
CREATE TABLE rollout_reports (
    id            bigserial   PRIMARY KEY,
    store         text        NOT NULL,
    gateway       text        NOT NULL,
    bundle        bigint      NOT NULL,
    outcome       text        NOT NULL CHECK (outcome IN ('applied', 'refused')),
    reason        text        NOT NULL DEFAULT '',
    rules_version text        NOT NULL DEFAULT '',
    at            timestamptz NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rollout_reports_store_at ON rollout_reports (store, at DESC, id DESC);
CREATE VIEW rollout_latest AS
    SELECT DISTINCT ON (store) store, gateway, bundle, outcome, reason, rules_version, at
    FROM rollout_reports
    ORDER BY store, at DESC, id DESC;

-- The bundles `proximity rollout publish` sent (it inserts; hq only reads).
CREATE TABLE bundles_published (
    store        text        NOT NULL,
    bundle       bigint      NOT NULL,
    stage        text        NOT NULL,   -- canary, rest, rollback...
    published_at timestamptz NOT NULL DEFAULT now(),
    key          text        NOT NULL,
    PRIMARY KEY (store, bundle)
);
