-- Readings, when no InfluxDB is configured. Identity = patient + metric + device + device
-- timestamp, so a redelivered reading overwrites itself instead of duplicating.
CREATE TABLE readings (
  patient_id uuid NOT NULL,
  metric text NOT NULL,
  ts timestamptz NOT NULL,
  device_id uuid NOT NULL,
  value double precision NOT NULL,
  unit text NOT NULL,
  seq bigint,
  stored_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (patient_id, metric, ts, device_id)
);
CREATE INDEX readings_patient_ts ON readings (patient_id, ts DESC, device_id, metric);
