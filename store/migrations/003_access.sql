-- People, roles, care teams, sessions, break-glass and the audit trail (issue 3).

-- Every person: staff who log in, and every patient (same id as patients.id). Patients who
-- never log in have no email and no password. No name is copied here for patients: the
-- patients table (and the PHI record) hold it.
CREATE TABLE users (
  id uuid PRIMARY KEY,
  email text,
  display_name text,
  password_hash text,
  active boolean NOT NULL DEFAULT true,
  failed_login_count integer NOT NULL DEFAULT 0,
  locked_until timestamptz,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
-- Case-insensitive uniqueness: Ada@x.org and ada@x.org are one account.
CREATE UNIQUE INDEX users_email ON users (lower(email)) WHERE email IS NOT NULL;

-- Roles as data. category decides how far a role reaches into patients (see
-- access/access-policy.ts): admin = every patient, clinician = care team + break-glass,
-- patient = self, developer/integrator/research = no patient.
CREATE TABLE role_definitions (
  id text PRIMARY KEY,
  name text NOT NULL,
  category text NOT NULL CHECK (category IN ('patient', 'clinician', 'admin', 'developer', 'integrator', 'research')),
  permissions text[] NOT NULL,
  builtin boolean NOT NULL DEFAULT false,
  created_at timestamptz NOT NULL DEFAULT now()
);

INSERT INTO role_definitions (id, name, category, builtin, permissions) VALUES
  ('patient', 'Patient', 'patient', true,
    ARRAY['patients:read', 'readings:read', 'phi:read', 'alerts:read', 'jobs:read', 'voice-notes:read']),
  ('nurse', 'Nurse', 'clinician', true,
    ARRAY['patients:read', 'readings:read', 'phi:read', 'phi:write', 'devices:read', 'devices:write',
          'alerts:read', 'alerts:ack', 'rules:read', 'overrides:write', 'break-glass',
          'jobs:read', 'jobs:write', 'voice-notes:read', 'voice-notes:write']),
  ('doctor', 'Doctor', 'clinician', true,
    ARRAY['patients:read', 'patients:write', 'readings:read', 'phi:read', 'phi:write', 'devices:read', 'devices:write',
          'alerts:read', 'alerts:ack', 'alerts:write', 'rules:read', 'overrides:write', 'break-glass',
          'jobs:read', 'jobs:write', 'voice-notes:read', 'voice-notes:write']),
  ('admin', 'Administrator', 'admin', true,
    ARRAY['readings:read', 'devices:read', 'devices:write', 'patients:read', 'patients:write', 'credentials:write',
          'phi:read', 'phi:write', 'users:admin', 'roles:admin', 'care-teams:write', 'audit:read', 'break-glass',
          'export:deidentified', 'tokens:write', 'alerts:read', 'alerts:ack', 'alerts:write', 'rules:read',
          'rules:write', 'overrides:write', 'jobs:read', 'jobs:write', 'voice-notes:read', 'voice-notes:write']),
  ('developer', 'Application developer', 'developer', true,
    ARRAY['devices:read', 'rules:read', 'tokens:write']),
  ('device-integrator', 'Device integrator', 'integrator', true,
    ARRAY['devices:read', 'devices:write', 'credentials:write']),
  ('ml-scientist', 'ML scientist', 'research', true,
    ARRAY['export:deidentified', 'rules:read']);

-- Role grants: user id <-> role id.
CREATE TABLE roles (
  user_id uuid NOT NULL REFERENCES users(id),
  role_id text NOT NULL REFERENCES role_definitions(id),
  granted_by text,
  granted_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (user_id, role_id)
);
CREATE INDEX roles_role ON roles (role_id);

-- Existing patients become users with the patient role.
INSERT INTO users (id, created_at) SELECT id, created_at FROM patients;
INSERT INTO roles (user_id, role_id, granted_by) SELECT id, 'patient', 'migration 003' FROM patients;
ALTER TABLE patients ADD CONSTRAINT patients_user FOREIGN KEY (id) REFERENCES users(id);

-- Every new patient is a user with the patient role, in the inserting transaction, whatever
-- code path inserts it (POST /v1/patients keeps its contract; no second write to forget).
CREATE FUNCTION patients_become_users() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO users (id, created_at) VALUES (NEW.id, NEW.created_at) ON CONFLICT (id) DO NOTHING;
  INSERT INTO roles (user_id, role_id, granted_by) VALUES (NEW.id, 'patient', 'patient created') ON CONFLICT DO NOTHING;
  RETURN NEW;
END $$;
CREATE TRIGGER patients_become_users BEFORE INSERT ON patients FOR EACH ROW EXECUTE FUNCTION patients_become_users();

-- API tokens name a role definition ('admin' already is one). No foreign key: a token whose
-- role is unknown simply holds no permission (POST /v1/tokens checks the role exists).
ALTER TABLE api_tokens ADD COLUMN created_by text;

-- Time-bounded care-team assignments: clinician <-> patient over [valid_from, valid_to).
CREATE TABLE care_team (
  id bigserial PRIMARY KEY,
  clinician_id uuid NOT NULL REFERENCES users(id),
  patient_id uuid NOT NULL REFERENCES patients(id),
  valid_from timestamptz NOT NULL,
  valid_to timestamptz,
  assigned_by text,
  created_at timestamptz NOT NULL DEFAULT now(),
  CHECK (valid_to IS NULL OR valid_to > valid_from)
);
CREATE INDEX care_team_clinician ON care_team (clinician_id, patient_id);
CREATE INDEX care_team_patient ON care_team (patient_id);

-- Break-glass: access outside the care team, with a stated reason, for a limited time.
CREATE TABLE break_glass_grants (
  id uuid PRIMARY KEY,
  user_id uuid NOT NULL REFERENCES users(id),
  patient_id uuid NOT NULL REFERENCES patients(id),
  reason text NOT NULL,
  granted_at timestamptz NOT NULL,
  expires_at timestamptz NOT NULL
);
CREATE INDEX break_glass_user ON break_glass_grants (user_id, patient_id, expires_at);
CREATE INDEX break_glass_granted ON break_glass_grants (granted_at);

-- Login sessions. A session is one family of rotating refresh tokens; revoking it ends every
-- token it issued.
CREATE TABLE sessions (
  id uuid PRIMARY KEY,
  user_id uuid NOT NULL REFERENCES users(id),
  created_at timestamptz NOT NULL,
  last_used_at timestamptz NOT NULL,
  expires_at timestamptz NOT NULL,
  revoked_at timestamptz,
  revoked_reason text
);
CREATE INDEX sessions_user ON sessions (user_id) WHERE revoked_at IS NULL;

-- SHA-256 of 256-bit random secrets, as api_tokens. replaced_at: a refresh token already
-- rotated; presenting it again is reuse.
CREATE TABLE session_tokens (
  token_hash bytea PRIMARY KEY,
  session_id uuid NOT NULL REFERENCES sessions(id),
  kind text NOT NULL CHECK (kind IN ('access', 'refresh')),
  expires_at timestamptz NOT NULL,
  replaced_at timestamptz
);
CREATE INDEX session_tokens_session ON session_tokens (session_id);

-- The audit trail: every PHI read/write and every refusal. Append-only.
CREATE TABLE audit_log (
  id bigserial PRIMARY KEY,
  at timestamptz NOT NULL DEFAULT clock_timestamp(),
  actor_id text,
  actor_kind text NOT NULL CHECK (actor_kind IN ('user', 'token', 'system')),
  role text,
  patient_id uuid,
  action text NOT NULL,
  fields text[] NOT NULL DEFAULT '{}',
  outcome text NOT NULL CHECK (outcome IN ('allowed', 'denied')),
  source_address text,
  request_id text,
  break_glass_reason text
);
CREATE INDEX audit_log_patient ON audit_log (patient_id, id);
CREATE INDEX audit_log_actor ON audit_log (actor_id, id);
CREATE INDEX audit_log_at ON audit_log (at);

-- A trigger refuses changes for every role (PGlite has only a superuser, on which REVOKE
-- has no effect); the REVOKE covers a Postgres deployment where the application's role is
-- not the owner. Only an owner who drops the trigger can rewrite history, and that is DDL.
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_log_no_update BEFORE UPDATE OR DELETE ON audit_log FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM PUBLIC;
