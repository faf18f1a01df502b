-- Alert rule state is rewritten row by row all day (every batch on a Postgres server; within a
-- second on the embedded default) while its indexed columns (patient_id, rule_id) never change.
-- Half-empty pages let Postgres write each new version beside the old one without touching the
-- indexes (a heap-only update): a 4,000-row upsert measured 41-91 ms on full pages and 18-25 ms
-- at fillfactor 50 (docs/performance.md). Pages written from now on leave the room; the rows
-- already stored move there as they are next updated.
ALTER TABLE alert_rule_state SET (fillfactor = 50);
