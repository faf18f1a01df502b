-- FHIR Bulk Data exports (issue 17, fhir/bulk/). One row per $export job: who started it (only
-- they may read its status and files), what was asked (level, types, _since: no PHI), the
-- patients it reaches (resolved at kick-off under the caller's access; NULL = every patient),
-- the export's data key (encrypted with the PHI keyring, bound to this row; the files under
-- VIGIL_DATA_DIR/bulk-exports/<id>/ are encrypted with it), progress, the output files, and
-- expiry. deleted_at: DELETE on the status URL (the status answers 404 from then on).
CREATE TABLE bulk_exports (
  job_id uuid PRIMARY KEY REFERENCES jobs(id),
  owner text NOT NULL,                       -- user:<id> or token:<id>
  actor_id text,                             -- the user behind it, for the audit trail
  request jsonb NOT NULL,                    -- {level, group, types, since, phi, requestUrl}
  patient_ids uuid[],                        -- NULL: every patient (the caller reaches all)
  key_enc text NOT NULL,
  key_id text NOT NULL,
  transaction_time timestamptz NOT NULL,
  progress text,                             -- X-Progress: "Observation 40%: 400 of 1000"
  output jsonb,                              -- [{type, file, count, bytes}]
  created_at timestamptz NOT NULL DEFAULT now(),
  expires_at timestamptz,
  files_deleted_at timestamptz,
  deleted_at timestamptz
);
CREATE INDEX bulk_exports_expiry ON bulk_exports (expires_at) WHERE files_deleted_at IS NULL;
