-- The audit database's schema on MariaDB: one row for every write.
CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER AUTO_INCREMENT PRIMARY KEY,
    action VARCHAR(10) NOT NULL,
    message_id INTEGER NOT NULL,
    -- The text written, or NULL for a delete.
    text VARCHAR(500) CHARACTER SET utf8mb4,
    at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4
