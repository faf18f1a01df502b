import t from 'tap'
import { createAuditLog } from '../../access/audit-log.ts'
import { clinicalTextKeyUsage, reencryptClinicalText } from '../../crypto/clinical-text.ts'
import { createKeyring } from '../../crypto/field-encryption.ts'
import { createPatientStore } from '../../patients/patients.ts'
import { createPeopleStore } from '../../access/people.ts'
import { randomKeys } from '../helpers/keys.ts'
import { openTestDatabase } from '../helpers/postgres.ts'

// Issue 11 item 8: clinical free text written before migration 008 is encrypted by the pass,
// rotated with the rest, counted per key; audit_log stays append-only except for that pass.
const db = await openTestDatabase(t)
const keys = randomKeys('k1', 'k2')
const indexKey = Buffer.alloc(32, 7)
const k1 = createKeyring('k1', new Map([['k1', keys.get('k1')!]]), indexKey)
const k2 = createKeyring('k2', keys, indexKey)

t.test('legacy plaintext is encrypted, then rotated to a new key, and reads back the same', async (t) => {
  const patient = await createPatientStore(db.pool).create('Rotation Patient')
  const legacyReason = 'legacy reason: patient on warfarin'
  // Rows as a Vigil before migration 008 wrote them: text, no key.
  const { rows: [audit] } = await db.pool.query(
    "INSERT INTO audit_log (actor_kind, action, outcome, patient_id, break_glass_reason) VALUES ('user', 'readings:read', 'allowed', $1, $2) RETURNING id",
    [patient.id, legacyReason])
  await db.pool.query("INSERT INTO patient_news2_scale (patient_id, spo2_scale, set_by, reason) VALUES ($1, 2, 'user:x', $2)", [patient.id, 'scale 2: COPD'])
  t.same(await clinicalTextKeyUsage(db.pool), [{ keyId: 'plaintext', clinicalText: 2 }])

  t.same(await reencryptClinicalText(db.pool, k1), { done: 2, failed: 0 })
  t.same(await clinicalTextKeyUsage(db.pool), [{ keyId: 'k1', clinicalText: 2 }])
  const stored = (await db.pool.query('SELECT break_glass_reason, key_id FROM audit_log WHERE id = $1', [audit.id])).rows[0]
  t.match(stored, { key_id: 'k1', break_glass_reason: /^v1\.k1\./ }, 'the audit row holds an envelope')
  const [row] = await createAuditLog(db.pool, k1).query({ patientId: patient.id, limit: 5 })
  t.equal(row!.breakGlassReason, legacyReason)

  // New writes under k1, then k2 becomes active: the pass moves everything.
  const people = createPeopleStore(db.pool, k1)
  const user = await people.createUser({ email: 'rotate@example.org', displayName: 'Dr Rotate', passwordHash: 'x', roles: ['doctor'], grantedBy: 'test' })
  const grant = await people.grantBreakGlass({ userId: user.id, patientId: patient.id, reason: 'unconscious in ED, no team reachable', at: new Date(), expiresAt: new Date(Date.now() + 60_000) })
  await createAuditLog(db.pool, k1).record({ actorId: user.id, actorKind: 'user', role: 'doctor', patientId: patient.id, action: 'break-glass', outcome: 'allowed', breakGlassReason: grant.reason })
  t.same(await clinicalTextKeyUsage(db.pool), [{ keyId: 'k1', clinicalText: 4 }])
  t.same(await reencryptClinicalText(db.pool, k2), { done: 4, failed: 0 })
  t.same(await clinicalTextKeyUsage(db.pool), [{ keyId: 'k2', clinicalText: 4 }])
  const onlyK2 = createKeyring('k2', new Map([['k2', keys.get('k2')!]]), indexKey)
  t.same((await createAuditLog(db.pool, onlyK2).query({ patientId: patient.id, limit: 5 })).map((r) => r.breakGlassReason).sort(),
    [grant.reason, legacyReason].sort(), 'readable with k2 alone')
  t.equal((await createPeopleStore(db.pool, onlyK2).listBreakGlass({ limit: 5 }))[0]!.reason, grant.reason)
})

t.test('audit_log stays append-only: the pass\'s exception covers the reason column only', async (t) => {
  const { rows: [row] } = await db.pool.query('SELECT id, break_glass_reason FROM audit_log WHERE key_id IS NOT NULL LIMIT 1')
  const client = await db.pool.connect()
  t.teardown(() => client.release())
  const attempts = [
    ['another column', 'UPDATE audit_log SET outcome = \'denied\' WHERE id = $1', [row.id]],
    ['the reason as plaintext', 'UPDATE audit_log SET break_glass_reason = \'rewritten\' WHERE id = $1', [row.id]],
    ['the reason and the actor', 'UPDATE audit_log SET break_glass_reason = break_glass_reason, actor_id = \'someone\' WHERE id = $1', [row.id]],
    ['a delete', 'DELETE FROM audit_log WHERE id = $1', [row.id]]
  ] as const
  for (const [what, sql, params] of attempts) {
    for (const withSetting of [false, true]) {
      await client.query('BEGIN')
      if (withSetting) await client.query("SET LOCAL vigil.audit_reencryption = 'on'")
      await t.rejects(client.query(sql, [...params]), { message: /append-only/ }, `${what}${withSetting ? ' (with the pass\'s setting)' : ''} is refused`)
      await client.query('ROLLBACK')
    }
  }
  const { rows: [after] } = await db.pool.query('SELECT break_glass_reason FROM audit_log WHERE id = $1', [row.id])
  t.equal(after.break_glass_reason, row.break_glass_reason)
})
