-- Clinical free text encrypted by the application (issue 11 item 8, crypto/clinical-text.ts):
-- alert comments and resolve reasons (alert_events.body.text / .reason), break-glass reasons
-- (break_glass_grants.reason, audit_log.break_glass_reason), rule-override and NEWS2
-- SpO2-scale reasons. Each value becomes a field envelope bound to its table, column and row;
-- the key column names its key. SQL cannot encrypt: rows written before this migration keep
-- their text with a NULL key column until Vigil's start-up pass (or `npm run rekey`) encrypts them.
ALTER TABLE break_glass_grants ADD COLUMN reason_key_id text;
ALTER TABLE patient_rule_overrides ADD COLUMN reason_key_id text;
ALTER TABLE patient_news2_scale ADD COLUMN reason_key_id text;
ALTER TABLE alert_events ADD COLUMN key_id text;
ALTER TABLE audit_log ADD COLUMN key_id text;

-- audit_log stays append-only, with one narrow exception: the encryption pass may replace
-- break_glass_reason (and key_id) of a row, and nothing else, inside a transaction that set
-- vigil.audit_reencryption (SET LOCAL). Every other column, including ones added later, must
-- be unchanged, and the new value must be an envelope under a named key. DELETE and TRUNCATE
-- stay refused.
CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'UPDATE'
     AND current_setting('vigil.audit_reencryption', true) = 'on'
     AND OLD.break_glass_reason IS NOT NULL
     AND NEW.key_id IS NOT NULL
     AND NEW.break_glass_reason LIKE 'v1.' || NEW.key_id || '.%'
     AND to_jsonb(NEW) - 'break_glass_reason' - 'key_id' = to_jsonb(OLD) - 'break_glass_reason' - 'key_id' THEN
    RETURN NEW;
  END IF;
  RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;
