import { randomBytes } from 'node:crypto'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import pino from 'pino'
import t from 'tap'
import type { Test } from 'tap'
import { loadConfig } from '../../config/config.ts'
import { createLogger } from '../../observability/logger.ts'
import { openDatabase } from '../../store/database.ts'
import { parseSecretKeyValue } from '../../crypto/secret-keys.ts'
import { createKeyring } from '../../crypto/field-encryption.ts'
import { createPatientRecordStore } from '../../patients/patient-records.ts'
import { startVigil } from '../../vigil.ts'
import { secretKeyValue } from '../helpers/keys.ts'
import { createLogCapture } from '../helpers/log-capture.ts'
import { createTestDatabase } from '../helpers/postgres.ts'
import { fullRecord } from '../helpers/records.ts'

const adminToken = 'rotation-admin-token-0123456789abcdef'
const PATIENTS = 5

for (const kind of ['postgres', 'pglite'] as const) {
  t.test(`key rotation on ${kind}`, async (t) => {
    const dataDir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-rotation-'))
    t.teardown(() => fs.rm(dataDir, { recursive: true, force: true }))
    let databaseUrl: string | null = null
    if (kind === 'postgres') {
      const testDb = await createTestDatabase()
      t.teardown(() => testDb.drop())
      databaseUrl = testDb.url
    }
    const k1 = randomBytes(32)
    const k2 = randomBytes(32)
    const logs = createLogCapture()

    /** Starts Vigil on the same data dir and database with VIGIL_SECRET_KEY = `secretKey`. */
    async function start (secretKey: string) {
      const config = loadConfig({
        HTTP_PORT: '0', MQTT_PORT: '0', VIGIL_DATA_DIR: dataDir, VIGIL_ADMIN_TOKEN: adminToken, LOG_LEVEL: 'info', API_MAX_EVENT_LOOP_DELAY_MS: '0',
        VIGIL_SECRET_KEY: secretKey, ...(databaseUrl === null ? {} : { DATABASE_URL: databaseUrl })
      })
      const vigil = await startVigil(config, createLogger('info', logs.stream))
      const api = async (method: string, route: string, body?: unknown): Promise<{ status: number, body: any }> => {
        const res = await fetch(`http://127.0.0.1:${vigil.httpPort}${route}`, {
          method,
          headers: { authorization: `Bearer ${adminToken}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
          body: body === undefined ? undefined : JSON.stringify(body)
        })
        const text = await res.text()
        return { status: res.status, body: text === '' ? undefined : JSON.parse(text) }
      }
      return { ...vigil, api }
    }
    type Started = Awaited<ReturnType<typeof start>>

    const patients: string[] = []
    async function expectAllReadable (t: Test, vigil: Started, when: string): Promise<void> {
      for (const [i, id] of patients.entries()) {
        const res = await vigil.api('GET', `/v1/patients/${id}/record`)
        t.equal(res.status, 200, `${when}: patient ${i} readable`)
        t.equal(res.body?.medicalCard?.number, `CARD-ROT${i}`, `${when}: patient ${i} decrypts to its own data`)
      }
      const lookup = await vigil.api('POST', '/v1/patients/lookup', { medicalCardNumber: 'card-rot3' })
      t.same(lookup.body, { items: [{ patientId: patients[3] }] }, `${when}: the blind index still finds the card`)
    }
    const keyCounts = async (vigil: Started) =>
      Object.fromEntries(((await vigil.api('GET', '/v1/admin/keys')).body.keys as Array<{ keyId: string, records: number, configured: boolean }>)
        .map((k) => [k.keyId, k.configured ? k.records : `unconfigured:${k.records}`]))

    // 1. Records written under k1, the single-key form.
    {
      const vigil = await start(k1.toString('base64'))
      try {
        for (let i = 0; i < PATIENTS; i++) {
          const patient = await vigil.api('POST', '/v1/patients', { displayName: `Rotation ${i}` })
          patients.push(patient.body.id)
          const put = await vigil.api('PUT', `/v1/patients/${patient.body.id}/record`, fullRecord(`ROT${i}`))
          t.equal(put.status, 200)
        }
        t.same(await keyCounts(vigil), { k1: PATIENTS })
        t.equal(await vigil.reencryption, null, 'nothing to re-encrypt')
      } finally {
        await vigil.close()
      }
    }

    // 2. Lazy re-encryption: with k2 active, reading a record moves it to k2.
    {
      const db = await openDatabase({ databaseUrl, dataDir, log: pino({ level: 'silent' }) })
      try {
        const rotated = createKeyring('k2', new Map([['k2', k2], ['k1', k1]]), parseSecretKeyValue(k1.toString('base64')).blindIndexKey)
        const store = createPatientRecordStore(db.pool, rotated, pino({ level: 'silent' }))
        const read = await store.get(patients[0]!)
        t.equal(read?.record.medicalCard?.number, 'CARD-ROT0')
        const { rows } = await db.pool.query('SELECT patient_id, key_id FROM patient_records ORDER BY patient_id')
        t.same(rows.filter((r) => r.key_id === 'k2').map((r) => r.patient_id), [patients[0]], 'the record read was rewritten under k2, the rest not yet')
      } finally {
        await db.close()
      }
    }

    // 3. Restart with k2 active and k1 kept (index: the original key): everything reads; the
    //    start-up pass moves the rest to k2.
    {
      const vigil = await start(secretKeyValue([['k2', k2], ['k1', k1]], k1))
      try {
        await expectAllReadable(t, vigil, 'k2 active, k1 kept')
        const progress = await vigil.reencryption
        t.equal(progress?.failed, 0, 'no record failed')
        // Reads racing the pass may move records first (lazily); the counts below are what matters.
        t.ok(progress !== null && progress.total <= PATIENTS - 1 && progress.done <= progress.total, 'the pass saw only the records still under k1')
        t.same(await keyCounts(vigil), { k1: 0, k2: PATIENTS }, 'k1 holds 0 records: it may be retired')
        t.ok(logs.find('re-encryption finished').length >= 1, 'the pass logged its end')
        t.ok(logs.find('re-encryption progress').every((l) => typeof l.done === 'number' && typeof l.total === 'number'), 'progress lines count rows')
      } finally {
        await vigil.close()
      }
    }

    // 4. k1 removed: everything still reads.
    {
      const vigil = await start(secretKeyValue([['k2', k2]], k1))
      try {
        await expectAllReadable(t, vigil, 'k1 retired')
        t.same(await keyCounts(vigil), { k2: PATIENTS })
      } finally {
        await vigil.close()
      }
    }

    // 5. A key removed too early: a clear 500 with its own code, and the operator sees why.
    {
      const vigil = await start(secretKeyValue([['k3', randomBytes(32)]], k1))
      try {
        const before = logs.lines.length
        const res = await vigil.api('GET', `/v1/patients/${patients[1]}/record`)
        t.equal(res.status, 500)
        t.equal(res.body.code, 'VIGIL_ERR_KEY_UNAVAILABLE')
        t.notMatch(JSON.stringify(res.body), /ROT/)
        t.match(logs.lines.slice(before).find((l) => l.msg === 'patient record is encrypted under a key that is not configured'), { keyId: 'k2', patientId: patients[1] })
        const progress = await vigil.reencryption
        t.same(progress, { done: 0, total: PATIENTS, failed: PATIENTS }, 'the pass leaves unreadable records as they are')
        t.same(await keyCounts(vigil), { k2: `unconfigured:${PATIENTS}`, k3: 0 })
      } finally {
        await vigil.close()
      }
    }
    t.notOk(logs.lines.some((l) => JSON.stringify(l).includes('ROT')), 'no record value in any log line')
    t.notOk(logs.lines.some((l) => JSON.stringify(l).includes(k1.toString('base64')) || JSON.stringify(l).includes(k2.toString('base64'))), 'no key in any log line')
  })
}
