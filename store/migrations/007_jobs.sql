-- Background jobs (issue 5): a durable queue. A job is claimed by a runner that holds a lease
-- (lock_token, locked_until) and renews it while it works; a job whose lease ran out (its
-- runner died) is claimed again. attempts counts claims, so a job that kills its runner every
-- time still ends, failed, after max_attempts.
CREATE TABLE jobs (
  id uuid PRIMARY KEY,
  type text NOT NULL,
  state text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
  patient_id uuid REFERENCES patients(id),   -- whose data the job touches: who may see the job
  payload jsonb NOT NULL DEFAULT '{}',       -- ids only, never PHI
  attempts integer NOT NULL DEFAULT 0,
  max_attempts integer NOT NULL CHECK (max_attempts >= 1),
  progress real NOT NULL DEFAULT 0 CHECK (progress >= 0 AND progress <= 1),
  result jsonb,                              -- ids and counts, never PHI (a transcript lives in voice_notes)
  error text,                                -- the last failure: a fixed message, never PHI
  cancel_requested boolean NOT NULL DEFAULT false,
  run_after timestamptz NOT NULL,            -- not claimed before (retry backoff)
  locked_by text,
  lock_token uuid,
  locked_until timestamptz,
  completions integer NOT NULL DEFAULT 0,    -- times the job's result was committed: 1 at most, checked by tests
  created_by text,                           -- principal (token id) that asked for it
  created_at timestamptz NOT NULL,
  started_at timestamptz,
  finished_at timestamptz,
  updated_at timestamptz NOT NULL
);
CREATE INDEX jobs_claimable ON jobs (type, run_after) WHERE state = 'queued';
CREATE INDEX jobs_running ON jobs (type, locked_until) WHERE state = 'running';
CREATE INDEX jobs_by_id ON jobs (created_at, id);
CREATE INDEX jobs_patient ON jobs (patient_id);

-- Voice notes: dictations and voice messages, transcribed by a 'transcription' job.
-- transcript and words_json are PHI: encrypted in the application (AES-256-GCM envelopes,
-- crypto/field-encryption.ts, bound to table/column/id) under key_id; never logged.
CREATE TABLE voice_notes (
  id uuid PRIMARY KEY,
  patient_id uuid NOT NULL REFERENCES patients(id),
  author_token_id text NOT NULL,
  author_user_id uuid,
  job_id uuid NOT NULL REFERENCES jobs(id),
  duration_ms integer NOT NULL,
  sample_rate integer NOT NULL,
  channels integer NOT NULL,
  bytes integer NOT NULL,
  transcript text,                           -- encrypted envelope
  words_json text,                           -- encrypted envelope of [{word, startMs, endMs, confidence?}] as JSON
  key_id text,                               -- the key transcript and words_json are under (rotation)
  confidence real,
  engine text,
  created_at timestamptz NOT NULL DEFAULT now(),
  transcribed_at timestamptz
);
CREATE INDEX voice_notes_patient ON voice_notes (patient_id, created_at DESC, id);
CREATE INDEX voice_notes_key ON voice_notes (key_id) WHERE key_id IS NOT NULL;

-- The uploaded audio until its job ends (then deleted: PHI minimization, see README).
-- In Postgres rather than on disk so any runner sharing the database can transcribe it.
CREATE TABLE voice_note_audio (
  voice_note_id uuid PRIMARY KEY REFERENCES voice_notes(id) ON DELETE CASCADE,
  audio bytea NOT NULL                       -- encrypted (binary envelope, crypto/field-encryption.ts)
);
