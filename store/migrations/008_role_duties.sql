-- Issue 13 §4: every role can do its job; a patient sees what is released to her.
--
-- Patients leave voice messages (voice-notes:write; the patient scope limits it to themselves).
-- Nurses comment on alerts (alerts:comment) without resolving or assigning (alerts:write).
-- clinical-notes:read: clinicians' notes as they are written (dictations not yet released,
-- alert comments, resolve reasons); roles without it (patients) see their own voice messages
-- and the dictations a clinician released (voice-notes:release), and alerts without comments.
ALTER TABLE voice_notes ADD COLUMN released_at timestamptz, ADD COLUMN released_by text;

UPDATE role_definitions SET permissions = array_append(permissions, 'voice-notes:write')
  WHERE id = 'patient' AND NOT 'voice-notes:write' = ANY (permissions);
-- Whoever could comment before (alerts:write, custom roles included) still can.
UPDATE role_definitions SET permissions = array_append(permissions, 'alerts:comment')
  WHERE (id = 'nurse' OR 'alerts:write' = ANY (permissions)) AND NOT 'alerts:comment' = ANY (permissions);
-- Everyone but patients who read notes or alerts before keeps reading the notes in them.
UPDATE role_definitions SET permissions = array_append(permissions, 'clinical-notes:read')
  WHERE category <> 'patient' AND ('voice-notes:read' = ANY (permissions) OR 'alerts:read' = ANY (permissions))
    AND NOT 'clinical-notes:read' = ANY (permissions);
UPDATE role_definitions SET permissions = array_append(permissions, 'voice-notes:release')
  WHERE id IN ('nurse', 'doctor', 'admin') AND NOT 'voice-notes:release' = ANY (permissions);
