-- Accounts keep only SCRAM salted keys (RFC 5802), one set per hash function; never a password.
CREATE TABLE accounts (
    domain          TEXT    NOT NULL,
    username        TEXT    NOT NULL,
    created_at      BIGINT  NOT NULL,
    iterations      INTEGER NOT NULL,
    sha1_salt       BLOB    NOT NULL,
    sha1_stored_key BLOB    NOT NULL,
    sha1_server_key BLOB    NOT NULL,
    sha256_salt       BLOB  NOT NULL,
    sha256_stored_key BLOB  NOT NULL,
    sha256_server_key BLOB  NOT NULL,
    PRIMARY KEY (domain, username)
);
