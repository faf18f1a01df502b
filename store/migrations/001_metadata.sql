-- Patients: minimal until the people/PHI work lands (id + display name).
CREATE TABLE patients (
  id uuid PRIMARY KEY,
  display_name text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);

-- Devices. id is also the MQTT client id and username.
CREATE TABLE devices (
  id uuid PRIMARY KEY,
  name text NOT NULL,
  mac text NOT NULL UNIQUE,                 -- normalized: lower-case, colon-separated
  owner_user_id uuid,                       -- who owns the device (hospital, patient); users arrive later
  assigned_by_user_id uuid,                 -- who made the current assignment
  firmware_version text NOT NULL,
  software_version text NOT NULL,
  started_at timestamptz NOT NULL,          -- date of purchase / start of use
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);

-- Every firmware/software version a device has reported or been given, oldest first.
CREATE TABLE device_versions (
  id bigserial PRIMARY KEY,
  device_id uuid NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
  firmware_version text NOT NULL,
  software_version text NOT NULL,
  changed_at timestamptz NOT NULL DEFAULT now(),
  changed_by uuid
);
CREATE INDEX device_versions_device ON device_versions (device_id, changed_at);

-- Device <-> patient assignments with validity periods; history is never deleted.
-- valid_to NULL = current. Periods of one device never overlap (enforced in the
-- assignment transaction, which locks the device row).
CREATE TABLE device_assignments (
  id bigserial PRIMARY KEY,
  device_id uuid NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
  patient_id uuid NOT NULL REFERENCES patients(id),
  valid_from timestamptz NOT NULL,
  valid_to timestamptz,
  assigned_by uuid,
  CHECK (valid_to IS NULL OR valid_to > valid_from)
);
CREATE UNIQUE INDEX device_assignments_one_open ON device_assignments (device_id) WHERE valid_to IS NULL;
CREATE INDEX device_assignments_device ON device_assignments (device_id, valid_from);
CREATE INDEX device_assignments_patient ON device_assignments (patient_id, valid_from);

-- MQTT credentials: scrypt hashes only; at most one active per device.
CREATE TABLE device_credentials (
  id uuid PRIMARY KEY,
  device_id uuid NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
  secret_hash text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  revoked_at timestamptz
);
CREATE UNIQUE INDEX device_credentials_one_active ON device_credentials (device_id) WHERE revoked_at IS NULL;

-- API bearer tokens: SHA-256 of 256-bit random secrets (a slow hash adds nothing at that entropy).
CREATE TABLE api_tokens (
  id uuid PRIMARY KEY,
  name text NOT NULL,
  role text NOT NULL,
  token_hash bytea NOT NULL UNIQUE,
  created_at timestamptz NOT NULL DEFAULT now(),
  last_used_at timestamptz,
  revoked_at timestamptz
);

-- Payloads ingest refused, with the reason. Payload capped; it may hold PHI, so only
-- the API (never logs or metrics) shows it.
CREATE TABLE rejections (
  id bigserial PRIMARY KEY,
  device_id uuid NOT NULL,
  topic text NOT NULL,
  reason text NOT NULL,
  message text NOT NULL,
  payload bytea NOT NULL,
  payload_bytes integer NOT NULL,
  received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rejections_device ON rejections (device_id, id DESC);
