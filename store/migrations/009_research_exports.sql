-- De-identified exports for ML scientists (issue 17, research/). One row per export job: the
-- export's pseudonym key (encrypted with the PHI keyring, bound to this table/column/id; never in
-- the files), the cohort asked for (metrics, period, rule, band: no PHI), who asked, the subjects
-- counted, and when the files expire. The files live under VIGIL_DATA_DIR/research-exports/<id>/
-- and are deleted at expires_at (files_deleted_at records it).
CREATE TABLE research_exports (
  job_id uuid PRIMARY KEY REFERENCES jobs(id),
  created_by text NOT NULL,                  -- principal token id: only it may download
  actor_id text,                             -- the user behind it, for the audit trail
  cohort jsonb NOT NULL,
  key_enc text NOT NULL,                     -- encrypted envelope of the 32-byte pseudonym key (base64)
  key_id text NOT NULL,
  subjects integer,
  files jsonb,                               -- [{name, bytes, sha256}]
  created_at timestamptz NOT NULL DEFAULT now(),
  expires_at timestamptz,
  files_deleted_at timestamptz
);
CREATE INDEX research_exports_expiry ON research_exports (expires_at) WHERE files_deleted_at IS NULL;
