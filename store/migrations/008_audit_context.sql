-- Issue 11: audit rows say more about who acted and on what.
-- token_creator: for a call made with an API token, the user (or `token:<id>`) who created the
--   token, so a person's trail includes what their tokens did.
-- client_request_id: an X-Request-Id the client sent, kept apart from request_id (which Vigil
--   generates): a client can no longer choose the id its audit rows are found by.
-- details: what the action touched besides the patient, e.g. a device reassignment's device
--   and both patients (ids only: never PHI values).
ALTER TABLE audit_log ADD COLUMN token_creator text;
ALTER TABLE audit_log ADD COLUMN client_request_id text;
ALTER TABLE audit_log ADD COLUMN details jsonb;
