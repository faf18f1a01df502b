-- Alerts that reach people (issue 13): who each tier notified, an on-call roster per care
-- team, and the 'updated' event (an open alert's summary following its condition).

ALTER TABLE alert_events DROP CONSTRAINT alert_events_type_check;
ALTER TABLE alert_events ADD CONSTRAINT alert_events_type_check
  CHECK (type IN ('opened', 'updated', 'severity_raised', 'acknowledged', 'assigned', 'commented', 'escalated', 'resolved'));

-- Who is on call for a patient's care team in a role (a tier's notify name: nurse, doctor,
-- rapid_response …) over [valid_from, valid_to). Set by admins.
CREATE TABLE on_call (
  id bigserial PRIMARY KEY,
  patient_id uuid NOT NULL REFERENCES patients(id),
  user_id uuid NOT NULL REFERENCES users(id),
  role text NOT NULL,
  valid_from timestamptz NOT NULL,
  valid_to timestamptz NOT NULL,
  set_by text,
  created_at timestamptz NOT NULL DEFAULT now(),
  CHECK (valid_to > valid_from)
);
CREATE INDEX on_call_patient ON on_call (patient_id, role, valid_to);

-- The people an alert's tiers notified, with the event that notified them ("my alerts").
CREATE TABLE alert_recipients (
  alert_id uuid NOT NULL REFERENCES alerts(id),
  user_id uuid NOT NULL,
  event_id bigint NOT NULL REFERENCES alert_events(id),
  tier integer NOT NULL,
  role text NOT NULL,
  via text NOT NULL CHECK (via IN ('care_team', 'on_call')),
  PRIMARY KEY (alert_id, user_id, event_id)
);
CREATE INDEX alert_recipients_user ON alert_recipients (user_id, alert_id);
