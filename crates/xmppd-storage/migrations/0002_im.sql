-- RFC 6121 roster items. Subscription state per Appendix A: subscription (none/to/from/both),
-- ask = pending out, approved = pre-approval (§3.4). Pending-in lives in subscription_requests.
CREATE TABLE roster_items (
    domain       TEXT    NOT NULL,
    username     TEXT    NOT NULL,
    contact      TEXT    NOT NULL,
    name         TEXT,
    subscription TEXT    NOT NULL DEFAULT 'none',
    ask          INTEGER NOT NULL DEFAULT 0,
    approved     INTEGER NOT NULL DEFAULT 0,
    groups       TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (domain, username, contact)
);

-- One version counter per roster (§2.6), bumped on every change.
CREATE TABLE roster_versions (
    domain   TEXT    NOT NULL,
    username TEXT    NOT NULL,
    version  BIGINT  NOT NULL,
    PRIMARY KEY (domain, username)
);

-- Inbound subscription requests not yet answered (state "pending in"), kept with the
-- original stanza so it can be delivered at the next login.
CREATE TABLE subscription_requests (
    domain   TEXT NOT NULL,
    username TEXT NOT NULL,
    contact  TEXT NOT NULL,
    stanza   TEXT NOT NULL,
    PRIMARY KEY (domain, username, contact)
);

-- XEP-0160 offline messages, in arrival order.
CREATE TABLE offline_messages (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    domain    TEXT   NOT NULL,
    username  TEXT   NOT NULL,
    stamp     BIGINT NOT NULL,
    stanza    TEXT   NOT NULL
);
CREATE INDEX offline_messages_owner ON offline_messages (domain, username, id);

-- Small per-account XML documents: vCard (XEP-0054), private XML (XEP-0049), last activity
-- (XEP-0012). `area` says which, `key` names the document within it.
CREATE TABLE account_data (
    domain   TEXT NOT NULL,
    username TEXT NOT NULL,
    area     TEXT NOT NULL,
    key      TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (domain, username, area, key)
);
