-- Alert lifecycle (issue 4): alerts opened by the engine's ConditionChanges, their events
-- (the SSE stream's log), notification deliveries, the webhook outbox, and device presence.

CREATE TABLE alerts (
  id uuid PRIMARY KEY,
  -- Creation order: list paging and a stable tie-break.
  seq bigserial NOT NULL UNIQUE,
  patient_id uuid NOT NULL REFERENCES patients(id),
  rule_id text NOT NULL,
  kind text NOT NULL,
  severity text NOT NULL CHECK (severity IN ('low', 'medium', 'high', 'critical')),
  status text NOT NULL CHECK (status IN ('open', 'acknowledged', 'resolved')),
  -- PHI-free text from the engine (metric, value, bound).
  summary text NOT NULL,
  details jsonb NOT NULL DEFAULT '{}',
  -- When the condition began (the engine's time), and when this row last changed (Vigil's).
  opened_at timestamptz NOT NULL,
  last_fired_at timestamptz NOT NULL,
  last_changed_at timestamptz NOT NULL,
  occurrences integer NOT NULL DEFAULT 1,
  acknowledged_by text,
  acknowledged_at timestamptz,
  assigned_to text,
  resolved_by text,
  resolved_at timestamptz,
  resolution text CHECK (resolution IN ('auto', 'manual')),
  escalation_policy text,
  -- Index of the policy tier notified last; next_escalation_at NULL: nothing left to do.
  escalation_tier integer NOT NULL DEFAULT 0,
  next_escalation_at timestamptz
);
-- One alert per patient and rule until it is resolved: repeats update it.
CREATE UNIQUE INDEX alerts_one_unresolved ON alerts (patient_id, rule_id) WHERE status <> 'resolved';
CREATE INDEX alerts_patient ON alerts (patient_id, seq);
CREATE INDEX alerts_opened ON alerts (opened_at);
CREATE INDEX alerts_escalation_due ON alerts (next_escalation_at) WHERE status = 'open' AND next_escalation_at IS NOT NULL;

-- Everything that happened to an alert, in order. id is the SSE event id (Last-Event-ID
-- resumes from it). body of a comment is a clinical note: shown by the API only.
CREATE TABLE alert_events (
  id bigserial PRIMARY KEY,
  alert_id uuid NOT NULL REFERENCES alerts(id),
  patient_id uuid NOT NULL,
  type text NOT NULL CHECK (type IN ('opened', 'severity_raised', 'acknowledged', 'assigned', 'commented', 'escalated', 'resolved')),
  actor_kind text NOT NULL CHECK (actor_kind IN ('user', 'token', 'system')),
  actor text,
  at timestamptz NOT NULL,
  body jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX alert_events_alert ON alert_events (alert_id, id);

-- Each delivery attempt on each channel (SSE, MQTT, webhook).
CREATE TABLE notification_deliveries (
  id bigserial PRIMARY KEY,
  event_id bigint NOT NULL REFERENCES alert_events(id),
  alert_id uuid NOT NULL,
  channel text NOT NULL CHECK (channel IN ('sse', 'mqtt', 'webhook')),
  -- sse: the principal's token id; mqtt: the topic; webhook: the webhook id.
  target text NOT NULL,
  attempt integer NOT NULL,
  status text NOT NULL CHECK (status IN ('delivered', 'failed', 'gave_up')),
  http_status integer,
  error text,
  at timestamptz NOT NULL
);
CREATE INDEX notification_deliveries_event ON notification_deliveries (event_id);

-- Webhook deliveries still owed, written in the transaction that writes the event, so a
-- restart resumes them.
CREATE TABLE webhook_outbox (
  id bigserial PRIMARY KEY,
  event_id bigint NOT NULL REFERENCES alert_events(id),
  webhook_id text NOT NULL,
  payload text NOT NULL,
  attempts integer NOT NULL DEFAULT 0,
  next_attempt_at timestamptz NOT NULL,
  state text NOT NULL CHECK (state IN ('pending', 'delivered', 'gave_up')),
  UNIQUE (event_id, webhook_id)
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_attempt_at) WHERE state = 'pending';

-- A device's last known MQTT state, for no-data causes that survive restarts.
CREATE TABLE device_presence (
  device_id uuid PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
  connected boolean NOT NULL DEFAULT false,
  changed_at timestamptz,
  last_reading_at timestamptz,
  battery_percent real,
  last_status_at timestamptz
);
