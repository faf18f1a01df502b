-- Alert engine (issue 4): rule state, accepted rules versions, per-patient overrides, NEWS2 SpO2 scale.

-- Each rule's evaluation state per patient (windows, sustained-since, firing), written after
-- every batch so a restart resumes where it stopped.
CREATE TABLE alert_rule_state (
  patient_id uuid NOT NULL,
  rule_id text NOT NULL,
  state jsonb NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (patient_id, rule_id)
);
CREATE INDEX alert_rule_state_rule ON alert_rule_state (rule_id);

-- Every accepted version of the rules file: who, when, what changed. Never updated.
CREATE TABLE alert_rule_versions (
  id bigserial PRIMARY KEY,
  version text NOT NULL,                 -- sha256 of the document
  loaded_at timestamptz NOT NULL DEFAULT now(),
  source text NOT NULL,                  -- file path
  loaded_by text NOT NULL,               -- 'file (uid N)' for edits on disk, 'token:<id>' / 'user:<id>' through the API
  added text[] NOT NULL,
  removed text[] NOT NULL,
  changed text[] NOT NULL,
  document text NOT NULL
);

-- Per-patient threshold overrides set by a doctor, with a reason and an expiry. The reason may
-- name a medication (PHI): only the API shows it.
CREATE TABLE patient_rule_overrides (
  patient_id uuid NOT NULL REFERENCES patients(id) ON DELETE CASCADE,
  rule_id text NOT NULL,
  parameters jsonb NOT NULL,
  reason text NOT NULL,
  set_by text NOT NULL,
  set_at timestamptz NOT NULL DEFAULT now(),
  expires_at timestamptz NOT NULL,
  PRIMARY KEY (patient_id, rule_id)
);

-- NEWS2 (RCP 2017): SpO2 scale 2 for patients with hypercapnic respiratory failure, set by a clinician.
CREATE TABLE patient_news2_scale (
  patient_id uuid PRIMARY KEY REFERENCES patients(id) ON DELETE CASCADE,
  spo2_scale smallint NOT NULL CHECK (spo2_scale IN (1, 2)),
  set_by text NOT NULL,
  reason text NOT NULL,
  set_at timestamptz NOT NULL DEFAULT now()
);
