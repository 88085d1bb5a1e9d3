-- A slot whose policy selected no server gets its own outcome, "empty": it is not a
-- success (nothing was protected), so it must not look like "ran".
--
-- SQLite cannot alter a CHECK constraint, and rebuilding the slots table is not
-- possible inside this migration's transaction while images.slot_id references it
-- (foreign keys cannot be switched off in a transaction). Widening a CHECK changes
-- no stored row, so the documented writable_schema edit of the table's SQL is safe
-- here (https://sqlite.org/lang_altertable.html#otheralter); RESET makes SQLite
-- reload the schema and bump schema_version for other connections.
PRAGMA writable_schema = ON;
UPDATE sqlite_schema
   SET sql = replace(sql, '''skipped_overlap'', ''failed'')', '''skipped_overlap'', ''failed'', ''empty'')')
 WHERE type = 'table' AND name = 'slots';
PRAGMA writable_schema = RESET;
