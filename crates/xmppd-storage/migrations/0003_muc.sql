-- XEP-0045 persistent rooms. `config` is the room's muc#roomconfig form as submitted
-- (jabber:x:data XML), read back by the same parser; `public` and `name` are copied out of
-- it so the public-room listing (disco#items) needs no parsing.
CREATE TABLE muc_rooms (
    service  TEXT    NOT NULL,
    room     TEXT    NOT NULL,
    name     TEXT    NOT NULL DEFAULT '',
    public   INTEGER NOT NULL DEFAULT 0,
    config   TEXT    NOT NULL,
    -- The last subject message (XML), '' when none was set.
    subject  TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (service, room)
);

-- Affiliations other than none (§5.2), with the reserved nick and the reason given.
CREATE TABLE muc_affiliations (
    service     TEXT NOT NULL,
    room        TEXT NOT NULL,
    jid         TEXT NOT NULL,
    affiliation TEXT NOT NULL,
    nick        TEXT,
    reason      TEXT,
    PRIMARY KEY (service, room, jid)
);

-- Room history (§7.2.15), in arrival order; trimmed to the room's history length. The seam
-- for XEP-0313 MAM of rooms.
CREATE TABLE muc_history (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    service TEXT   NOT NULL,
    room    TEXT   NOT NULL,
    stamp   BIGINT NOT NULL,
    stanza  TEXT   NOT NULL
);
CREATE INDEX muc_history_room ON muc_history (service, room, id);
