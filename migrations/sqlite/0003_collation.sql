-- PostgreSQL's 0003 gives identifiers byte-wise comparison (COLLATE "C"). SQLite compares TEXT
-- byte by byte already (BINARY), so there is nothing to change here; the file keeps both
-- databases at the same schema version.
SELECT 1;
