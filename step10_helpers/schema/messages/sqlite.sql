-- The messages database's schema on SQLite, as the team's schema tool would apply it.
-- The app maps whatever this creates: it never creates tables itself.
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    text VARCHAR(500) NOT NULL,
    -- SQLite keeps no time zone: CURRENT_TIMESTAMP is UTC, to the second.
    created_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP
);
