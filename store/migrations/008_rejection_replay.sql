-- Issue 12: device_unassigned payloads are replayed under today's assignments once; a replayed
-- row is kept (the record of what the device sent) and marked.
ALTER TABLE rejections ADD COLUMN replayed_at timestamptz;
CREATE INDEX rejections_unassigned_pending ON rejections (device_id, id) WHERE reason = 'device_unassigned' AND replayed_at IS NULL;
