-- Public room logs (XEP-0045 §4.1 "Logging", muc#roomconfig_enablelogging): what was said
-- in a room while its logging was on, served read-only over HTTP. A line is a message body
-- or a new subject; rows older than the service's `log_days` are dropped as lines arrive,
-- and a destroyed room's log goes with it.
CREATE TABLE muc_log (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    service TEXT    NOT NULL,
    room    TEXT    NOT NULL,
    -- Seconds since the epoch (UTC).
    stamp   BIGINT  NOT NULL,
    nick    TEXT    NOT NULL,
    -- 1: `text` is the subject the occupant set.
    subject INTEGER NOT NULL DEFAULT 0,
    text    TEXT    NOT NULL
);
CREATE INDEX muc_log_room ON muc_log (service, room, stamp);
