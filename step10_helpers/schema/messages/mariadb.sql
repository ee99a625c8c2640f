-- The messages database's schema on MariaDB, as the team's schema tool would apply it.
-- The app maps whatever this creates: it never creates tables itself.
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER AUTO_INCREMENT PRIMARY KEY,
    -- utf8mb4 whatever the database's default: MySQL's utf8 holds 3 bytes a
    -- character at most, and refuses an emoji.
    text VARCHAR(500) CHARACTER SET utf8mb4 NOT NULL,
    -- DATETIME keeps no time zone: UTC, to the microsecond, as on SQLite.
    created_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4
