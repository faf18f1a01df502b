import t from 'tap'
import type { StoredReading } from '../../readings/reading.ts'
import { startApiFixture } from '../helpers/api-deps.ts'
import { onCareTeam, userWithLogin } from '../helpers/people.ts'

// GET /v1/patients/{id}/readings.csv (issue 17): one row per instant and device, a column per
// metric named with its LOINC code and UCUM unit, read from the store a page at a time.

const { deps, app, headers: admin } = await startApiFixture(t, 'csv test', {
  apiOptions: { rateLimitPerMinute: 1_000_000, unauthenticatedRateLimitPerMinute: 1_000_000, maxEventLoopDelayMs: 0 }
})
const patient = await deps.patients.create('Csv Patient')
const other = await deps.patients.create('Other Csv')
const deviceA = '1a000000-0000-4000-8000-000000000001'
const deviceB = '2b000000-0000-4000-8000-000000000002'
const base = Date.UTC(2025, 10, 26, 0, 0, 0)
const readings: StoredReading[] = []
// 1200 instants of heart rate and SpO2 on A (2400 readings: more than two store pages), and a
// temperature on B at one of them.
for (let i = 0; i < 1200; i++) {
  readings.push({ patientId: patient.id, deviceId: deviceA, metric: 'heart_rate', value: 60 + (i % 40), unit: '/min', ts: base + i * 60_000, seq: null })
  readings.push({ patientId: patient.id, deviceId: deviceA, metric: 'spo2', value: 90 + (i % 10), unit: '%', ts: base + i * 60_000, seq: null })
}
readings.push({ patientId: patient.id, deviceId: deviceB, metric: 'body_temp', value: 37.25, unit: 'Cel', ts: base + 5 * 60_000, seq: null })
readings.push({ patientId: other.id, deviceId: deviceA, metric: 'heart_rate', value: 99, unit: '/min', ts: base, seq: null })
await deps.readings.write(readings)

const iso = (ms: number) => new Date(ms).toISOString()
const url = (id: string, query: string) => `/v1/patients/${id}/readings.csv?${query}`

t.test('every instant of the range once, newest first, with LOINC codes and units in the header', async (t) => {
  const res = await app.inject({ method: 'GET', url: url(patient.id, `from=${iso(base)}&to=${iso(base + 1200 * 60_000)}`), headers: admin })
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /^text\/csv/)
  t.equal(res.headers['content-disposition'], `attachment; filename="readings-${patient.id}.csv"`)
  const lines = res.body.split('\r\n')
  t.equal(lines.at(-1), '', 'ends with CRLF')
  const header = lines[0]!.split(',')
  t.same(header.slice(0, 2), ['time', 'device_id'])
  t.ok(header.includes('heart_rate [LOINC 8867-4] (/min)'))
  t.ok(header.includes('spo2 [LOINC 2708-6] (%)'))
  t.ok(header.includes('body_temp [LOINC 8310-5] (Cel)'))
  const rows = lines.slice(1, -1).map((l) => l.split(','))
  t.equal(rows.length, 1201, 'one row per instant and device')
  const hr = header.indexOf('heart_rate [LOINC 8867-4] (/min)')
  const temp = header.indexOf('body_temp [LOINC 8310-5] (Cel)')
  t.same([rows[0]![0], rows[0]![1], rows[0]![hr]], [iso(base + 1199 * 60_000), deviceA, String(60 + (1199 % 40))])
  const tempRow = rows.find((r) => r[1] === deviceB)!
  t.same([tempRow[0], tempRow[temp], tempRow[hr]], [iso(base + 5 * 60_000), '37.25', ''])
  const times = rows.filter((r) => r[1] === deviceA).map((r) => r[0])
  t.equal(new Set(times).size, 1200, 'no instant twice across store pages')
})

t.test('a range and chosen metrics', async (t) => {
  const res = await app.inject({ method: 'GET', url: url(patient.id, `from=${iso(base + 60_000)}&to=${iso(base + 3 * 60_000)}&metric=heart_rate`), headers: admin })
  t.equal(res.statusCode, 200)
  t.equal(res.body, `time,device_id,heart_rate [LOINC 8867-4] (/min)\r\n${iso(base + 120_000)},${deviceA},62\r\n${iso(base + 60_000)},${deviceA},61\r\n`)
})

t.test('refusals', async (t) => {
  const nurse = await userWithLogin(app, admin, ['nurse'], 'nurse@csv.test')
  await onCareTeam(app, admin, nurse.id, patient.id)
  const range = `from=${iso(base)}&to=${iso(base + 60_000)}`
  t.equal((await app.inject({ method: 'GET', url: url(patient.id, range), headers: nurse.headers })).statusCode, 200)
  const offTeam = await app.inject({ method: 'GET', url: url(other.id, range), headers: nurse.headers })
  t.equal(offTeam.statusCode, 404)
  t.equal(offTeam.json().code, 'VIGIL_ERR_UNKNOWN_PATIENT')
  t.equal((await app.inject({ method: 'GET', url: url(patient.id, range) })).statusCode, 401)
  for (const query of [`from=${iso(base)}`, `from=${iso(base + 60_000)}&to=${iso(base)}`, `${range}&metric=nope`]) {
    const res = await app.inject({ method: 'GET', url: url(patient.id, query), headers: admin })
    t.equal(res.statusCode, 400, query)
    t.equal(res.json().code, 'VIGIL_ERR_VALIDATION', query)
  }
})
