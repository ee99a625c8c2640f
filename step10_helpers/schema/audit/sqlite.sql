-- The audit database's schema on SQLite: one row for every write.
CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER PRIMARY KEY,
    action VARCHAR(10) NOT NULL,
    message_id INTEGER NOT NULL,
    -- The text written, or NULL for a delete.
    text VARCHAR(500),
    at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP
);
