-- The patient's structured record (PHI). Sensitive groups are encrypted by the application
-- (AES-256-GCM, crypto/field-encryption.ts): each *_enc column holds one envelope
-- `v1.<keyId>.<iv>.<ciphertext+tag>` whose additional data is (patient_records, column,
-- patient_id), so a value copied to another row or column does not decrypt.
-- Every envelope of a row is written under the same key, recorded in key_id so rotation can
-- find rows still under a retired key. NULL = the field is empty.
CREATE TABLE patient_records (
  patient_id uuid PRIMARY KEY REFERENCES patients(id) ON DELETE CASCADE,
  key_id text NOT NULL,
  date_of_birth_enc text,
  addresses_enc text,
  primary_care_provider_enc text,
  billing_enc text,
  insurance_enc text,
  medical_card_enc text,
  family_members_enc text,
  emergency_contacts_enc text,
  gender_enc text,
  medications_enc text,
  allergies_enc text,
  -- Plain: height and weight are also vital-sign readings (body_height, body_weight), which are
  -- stored unencrypted; here the database can check their range.
  height_cm double precision CHECK (height_cm BETWEEN 20 AND 275),
  weight_kg double precision CHECK (weight_kg BETWEEN 0.5 AND 500),
  -- HMAC-SHA256 blind index of the normalized medical card number (exact-match lookup only).
  medical_card_index bytea,
  -- Optimistic concurrency: every write bumps it; a re-encryption loses to a concurrent write.
  revision integer NOT NULL DEFAULT 1,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX patient_records_key_id ON patient_records (key_id);
CREATE INDEX patient_records_medical_card_index ON patient_records (medical_card_index) WHERE medical_card_index IS NOT NULL;
