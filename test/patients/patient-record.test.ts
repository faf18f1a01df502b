import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import pino from 'pino'
import t from 'tap'
import { buildApi } from '../../api/app.ts'
import { openDatabase } from '../../store/database.ts'
import { apiDepsFor } from '../helpers/api-deps.ts'
import { createTestDatabase } from '../helpers/postgres.ts'
import { fullRecord } from '../helpers/records.ts'
import { seedEmbeddedDatabase } from '../helpers/pglite-template.ts'

for (const kind of ['postgres', 'pglite'] as const) {
  t.test(`patient records on ${kind}`, async (t) => {
    const log = pino({ level: 'silent' })
    let db
    if (kind === 'postgres') {
      const testDb = await createTestDatabase()
      t.teardown(() => testDb.drop())
      db = await openDatabase({ databaseUrl: testDb.url, dataDir: '', log })
    } else {
      const dataDir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-records-'))
      t.teardown(() => fs.rm(dataDir, { recursive: true, force: true }))
      db = await openDatabase({ databaseUrl: null, dataDir: await seedEmbeddedDatabase(dataDir), log })
    }
    t.teardown(() => db.close())
    const deps = apiDepsFor(db, log)
    const app = await buildApi(deps)
    t.teardown(() => app.close())
    const { token } = await deps.tokens.create('records test', 'admin')
    const headers = { authorization: `Bearer ${token}` }
    const newPatient = async (): Promise<string> =>
      (await app.inject({ method: 'POST', url: '/v1/patients', headers, payload: { displayName: 'Record Patient' } })).json().id
    const record = (id: string) => `/v1/patients/${id}/record`

    t.test('put, get, patch, clear', async (t) => {
      const id = await newPatient()
      const missing = await app.inject({ method: 'GET', url: record(id), headers })
      t.equal(missing.statusCode, 404)
      t.equal(missing.json().code, 'VIGIL_ERR_NOT_FOUND')

      const full = fullRecord('A')
      const put = await app.inject({ method: 'PUT', url: record(id), headers, payload: full })
      t.equal(put.statusCode, 200, put.body)
      t.match(put.json(), { patientId: id, ...full, updatedAt: String })
      const got = await app.inject({ method: 'GET', url: record(id), headers })
      t.same(got.json(), put.json())

      const patched = await app.inject({
        method: 'PATCH', url: record(id), headers,
        payload: { medicalCard: { number: 'NEW-1', issuer: 'TK' }, billing: null, emergencyContacts: [] }
      })
      t.equal(patched.statusCode, 200, patched.body)
      const after = patched.json()
      t.same(after.medicalCard, { number: 'NEW-1', issuer: 'TK' })
      t.notOk('billing' in after, 'null clears a group')
      t.same(after.emergencyContacts, [], '[] clears a list')
      t.same(after.addresses, full.addresses, 'fields not in the patch are kept')
      t.same(after.medicalHistory, full.medicalHistory)

      // PUT replaces: whatever is left out is cleared.
      const replaced = await app.inject({ method: 'PUT', url: record(id), headers, payload: { dateOfBirth: '1990-05-01' } })
      t.same(replaced.json(), {
        patientId: id, dateOfBirth: '1990-05-01', addresses: [], insurance: [], familyMembers: [], emergencyContacts: [],
        medicalHistory: { medications: [], allergies: [] }, updatedAt: replaced.json().updatedAt
      })

      // PATCH creates a record that does not exist yet.
      const other = await newPatient()
      const created = await app.inject({ method: 'PATCH', url: record(other), headers, payload: { medicalHistory: { gender: 'male' } } })
      t.equal(created.statusCode, 200)
      t.same(created.json().medicalHistory, { gender: 'male', medications: [], allergies: [] })
    })

    t.test('what the database holds: envelopes for sensitive groups, plain height and weight, a blind index', async (t) => {
      const id = await newPatient()
      await app.inject({ method: 'PUT', url: record(id), headers, payload: fullRecord('ROWCHECK') })
      const { rows: [row] } = await db.pool.query('SELECT * FROM patient_records WHERE patient_id = $1', [id])
      for (const column of ['date_of_birth_enc', 'addresses_enc', 'primary_care_provider_enc', 'billing_enc', 'insurance_enc', 'medical_card_enc',
        'family_members_enc', 'emergency_contacts_enc', 'gender_enc', 'medications_enc', 'allergies_enc']) {
        t.match(row[column], /^v1\.k1\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/, column)
      }
      t.equal(row.height_cm, 172)
      t.equal(row.weight_kg, 68.5)
      t.equal(row.medical_card_index.length, 32)
      t.notMatch(JSON.stringify(row), /ROWCHECK|1984-02-29|female|hives|Berlin/, 'no plaintext in the row')
    })

    t.test('a ciphertext copied to another patient\'s row is refused, not shown', async (t) => {
      const a = await newPatient()
      const b = await newPatient()
      await app.inject({ method: 'PUT', url: record(a), headers, payload: fullRecord('COPY-A') })
      await app.inject({ method: 'PUT', url: record(b), headers, payload: fullRecord('COPY-B') })
      await db.pool.query(
        'UPDATE patient_records SET date_of_birth_enc = (SELECT date_of_birth_enc FROM patient_records WHERE patient_id = $1) WHERE patient_id = $2', [a, b])
      const res = await app.inject({ method: 'GET', url: record(b), headers })
      t.equal(res.statusCode, 500)
      t.equal(res.json().code, 'VIGIL_ERR_DECRYPTION_FAILED')
      t.notMatch(res.body, /COPY|1984/)
      t.equal((await app.inject({ method: 'GET', url: record(a), headers })).statusCode, 200, 'the source row still reads')
    })

    t.test('lookup by medical card number through the blind index', async (t) => {
      const a = await newPatient()
      await app.inject({ method: 'PUT', url: record(a), headers, payload: { medicalCard: { number: 'LOOK-9876 54', issuer: 'AOK' } } })
      for (const typed of ['LOOK-9876 54', 'look987654', ' Look-98-76-54 ']) {
        const res = await app.inject({ method: 'POST', url: '/v1/patients/lookup', headers, payload: { medicalCardNumber: typed.trim() } })
        t.equal(res.statusCode, 200, typed)
        t.same(res.json(), { items: [{ patientId: a }] }, typed)
      }
      const none = await app.inject({ method: 'POST', url: '/v1/patients/lookup', headers, payload: { medicalCardNumber: 'LOOK-000' } })
      t.same(none.json(), { items: [] })
      // Changing the card moves the index with it.
      await app.inject({ method: 'PATCH', url: record(a), headers, payload: { medicalCard: null } })
      const gone = await app.inject({ method: 'POST', url: '/v1/patients/lookup', headers, payload: { medicalCardNumber: 'LOOK987654' } })
      t.same(gone.json(), { items: [] })
    })

    t.test('invalid records: 400 VIGIL_ERR_VALIDATION naming the field, never echoing the value', async (t) => {
      const id = await newPatient()
      const base = fullRecord('V')
      const cases: Array<[string, object, string]> = [
        ['DOB in the future', { ...base, dateOfBirth: '2999-01-01' }, 'body/dateOfBirth'],
        ['DOB before 1900', { ...base, dateOfBirth: '1899-12-31' }, 'body/dateOfBirth'],
        ['DOB not a date', { ...base, dateOfBirth: 'SECRET-31/02/1980' }, 'body/dateOfBirth'],
        ['DOB impossible date', { ...base, dateOfBirth: '1980-02-30' }, 'body/dateOfBirth'],
        ['bad email', { ...base, primaryCareProvider: { name: 'Dr', email: 'SECRET-not-an-email' } }, 'body/primaryCareProvider/email'],
        ['bad emergency contact email', { ...base, emergencyContacts: [{ name: 'C', relationship: 'x', phone: '+491', email: 'SECRET@' }] }, 'body/emergencyContacts/0/email'],
        ['missing emergency phone', { ...base, emergencyContacts: [{ name: 'SECRET', relationship: 'x' }] }, 'body/emergencyContacts/0/phone'],
        ['bad phone', { ...base, familyMembers: [{ name: 'F', relationship: 'x', phone: 'SECRET-phone' }] }, 'body/familyMembers/0/phone'],
        ['bad severity', { ...base, medicalHistory: { allergies: [{ substance: 'SECRET', reaction: 'r', severity: 'deadly' }] } }, 'body/medicalHistory/allergies/0/severity'],
        ['bad gender', { ...base, medicalHistory: { gender: 'SECRET' } }, 'body/medicalHistory/gender'],
        ['height out of range', { ...base, medicalHistory: { heightCm: 9000 } }, 'body/medicalHistory/heightCm'],
        ['medication without dose', { ...base, medicalHistory: { medications: [{ name: 'SECRET', frequency: 'daily' }] } }, 'body/medicalHistory/medications/0/dose'],
        ['medication since the future', { ...base, medicalHistory: { medications: [{ name: 'SECRET', dose: '1', frequency: 'daily', since: '2999-01-01' }] } }, 'body/medicalHistory/medications/0/since'],
        ['lower-case country', { ...base, addresses: [{ ...base.addresses[0], country: 'de' }] }, 'body/addresses/0/country'],
        ['unassigned country', { ...base, addresses: [{ ...base.addresses[0], country: 'QQ' }] }, 'body/addresses/0/country'],
        ['UK is reserved, GB is assigned', { ...base, addresses: [{ ...base.addresses[0], country: 'UK' }] }, 'body/addresses/0/country'],
        ['bad address kind', { ...base, addresses: [{ ...base.addresses[0], kind: 'SECRET' }] }, 'body/addresses/0/kind'],
        ['unknown top-level field', { ...base, ssn: 'SECRET-123' }, 'body/ssn'],
        ['unknown nested field', { ...base, medicalCard: { number: 'C1', issuer: 'I', pin: 'SECRET' } }, 'body/medicalCard/pin'],
        ['blank name', { ...base, familyMembers: [{ name: '   ', relationship: 'x' }] }, 'body/familyMembers/0/name'],
        ['bad card number', { ...base, medicalCard: { number: 'SECRET/../1', issuer: 'I' } }, 'body/medicalCard/number']
      ]
      for (const method of ['PUT', 'PATCH'] as const) {
        for (const [name, payload, where] of cases) {
          const res = await app.inject({ method, url: record(id), headers, payload })
          t.equal(res.statusCode, 400, `${method} ${name}`)
          t.equal(res.json().code, 'VIGIL_ERR_VALIDATION', `${method} ${name}`)
          t.ok(res.json().details?.some((d: { path: string }) => d.path === where), `${method} ${name}: details name ${where} (${res.body})`)
          t.notMatch(res.body, /SECRET|2999|1899|9000|deadly/, `${method} ${name}: no value echoed`)
        }
      }
      t.equal((await app.inject({ method: 'GET', url: record(id), headers })).statusCode, 404, 'nothing was stored')
      const empty = await app.inject({ method: 'PATCH', url: record(id), headers, payload: {} })
      t.equal(empty.statusCode, 400, 'an empty PATCH is refused')
      const several = await app.inject({ method: 'PUT', url: record(id), headers, payload: { ...base, dateOfBirth: '2999-01-01', addresses: [{ ...base.addresses[0], country: 'QQ' }] } })
      t.same(several.json().details.map((d: { path: string }) => d.path).sort(), ['body/addresses/0/country', 'body/dateOfBirth'], 'semantic problems are reported together')
    })

    t.test('unknown patients and malformed ids', async (t) => {
      const unknown = '00000000-0000-4000-8000-000000000000'
      for (const [method, payload] of [['GET', undefined], ['PUT', {}], ['PATCH', { dateOfBirth: '1990-01-01' }]] as const) {
        const res = await app.inject({ method, url: record(unknown), headers, ...(payload === undefined ? {} : { payload }) })
        t.equal(res.statusCode, 404, method)
        t.equal(res.json().code, 'VIGIL_ERR_UNKNOWN_PATIENT', method)
      }
      const malformed = await app.inject({ method: 'GET', url: '/v1/patients/nope/record', headers })
      t.equal(malformed.json().details[0].path, 'params/id')
      const noToken = await app.inject({ method: 'GET', url: record(unknown) })
      t.equal(noToken.statusCode, 401)
    })

    t.test('GET /v1/admin/keys counts records per key', async (t) => {
      const res = await app.inject({ method: 'GET', url: '/v1/admin/keys', headers })
      t.equal(res.statusCode, 200)
      const { rows: [{ n }] } = await db.pool.query('SELECT count(*)::int AS n FROM patient_records')
      t.same(res.json(), { activeKeyId: 'k1', keys: [{ keyId: 'k1', configured: true, active: true, records: n, voiceNotes: 0, clinicalText: 0 }] })
    })
  })
}
