-- XEP-0060 publish-subscribe, for PEP (service = the account's bare JID) and the generic
-- service (service = its domain). `config` is the node configuration as the pubsub module
-- writes it (its XEP-0004 result form).
CREATE TABLE pubsub_nodes (
    service TEXT NOT NULL,
    node    TEXT NOT NULL,
    config  TEXT NOT NULL,
    PRIMARY KEY (service, node)
);

-- Items in publication order (`seq` grows with every publish, a republished id moves up).
CREATE TABLE pubsub_items (
    service   TEXT   NOT NULL,
    node      TEXT   NOT NULL,
    item_id   TEXT   NOT NULL,
    seq       BIGINT NOT NULL,
    publisher TEXT   NOT NULL,
    payload   TEXT   NOT NULL,
    PRIMARY KEY (service, node, item_id)
);
CREATE INDEX pubsub_items_order ON pubsub_items (service, node, seq);

-- An entity's affiliation with a node and its subscription to it (XEP-0060 §4.1, §4.2); a row
-- whose affiliation and subscription are both 'none' is not kept.
CREATE TABLE pubsub_members (
    service      TEXT NOT NULL,
    node         TEXT NOT NULL,
    jid          TEXT NOT NULL,
    affiliation  TEXT NOT NULL,
    subscription TEXT NOT NULL,
    PRIMARY KEY (service, node, jid)
);
CREATE INDEX pubsub_members_jid ON pubsub_members (jid);

-- XEP-0115 entity capabilities: the disco#info features behind a verified hash.
CREATE TABLE caps (
    ver      TEXT NOT NULL PRIMARY KEY,
    features TEXT NOT NULL
);
