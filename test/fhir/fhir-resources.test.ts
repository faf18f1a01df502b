import t from 'tap'
import { observationId, parseObservationId } from '../../fhir/observation-ids.ts'
import { createReadingGrouper, groupReadings, news2Breakdown, observationOf, observationsOf, operationOutcomeOf, patientOf } from '../../fhir/resources.ts'
import { dateInterval, dateRange, patientIdOf, tokensOf } from '../../fhir/search-params.ts'
import { metricsForCode } from '../../fhir/vital-signs.ts'
import type { StoredReading } from '../../readings/reading.ts'
import { pageOfGroups } from '../../api/routes/fhir-observations.ts'
import { fhirErrors } from '../helpers/fhir-validation.ts'

// The pure parts of the FHIR door: mappers, ids, search parameter parsing, paging of groups.

const patientId = '0f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a0b'
const deviceId = 'ffffffff-ffff-4fff-bfff-ffffffffffff'
const r = (metric: string, value: number, unit: string, ts: number, device = deviceId): StoredReading => ({ patientId, deviceId: device, metric, value, unit, ts, seq: null })

t.test('Observation ids: the reading key round-trips within FHIR\'s 64 characters', async (t) => {
  const keys = [
    { patientId, deviceId, ts: 1764150000000, metric: 'heart_rate' as const },
    { patientId: '00000000-0000-0000-0000-000000000000', deviceId: 'ffffffff-ffff-ffff-ffff-ffffffffffff', ts: 0, metric: 'bp' as const },
    { patientId: 'ffffffff-ffff-4fff-bfff-ffffffffffff', deviceId, ts: 253402300799999, metric: 'news2_score' as const }
  ]
  for (const key of keys) {
    const code = { heart_rate: 'hr', bp: 'bp', news2_score: 'news2' }[key.metric]
    const id = observationId(key, code)
    t.ok(/^[A-Za-z0-9\-.]{1,64}$/.test(id), `${id} is a FHIR id`)
    t.same(parseObservationId(id), key)
  }
  for (const bad of ['', 'a.b.c', 'a.b.c.xx', '0a.b.c.hr', `${'z'.repeat(23)}.0.0.hr`, '0.0.0.nope', 'zzzzzzzzzzzzzzzzzzzzzz.0.0.hr']) {
    t.equal(parseObservationId(bad), null, `refuses ${bad}`)
  }
})

t.test('readings group into Observations: a systolic and a diastolic of one instant and device are one panel', async (t) => {
  const readings = [
    r('bp_diastolic', 80, 'mm[Hg]', 3000), r('bp_systolic', 120, 'mm[Hg]', 3000), r('heart_rate', 70, '/min', 3000),
    r('bp_systolic', 130, 'mm[Hg]', 2000),
    r('bp_diastolic', 85, 'mm[Hg]', 1000, '11111111-1111-4111-8111-111111111111'), r('bp_systolic', 125, 'mm[Hg]', 1000)
  ]
  const groups = [...groupReadings(readings)].map((g) => g.map((x) => `${x.metric}@${x.ts}`))
  t.same(groups, [
    ['bp_systolic@3000', 'bp_diastolic@3000'], ['heart_rate@3000'], ['bp_systolic@2000'], ['bp_diastolic@1000'], ['bp_systolic@1000']
  ], 'different devices at one instant are not paired')
  const observations = [...observationsOf(readings)]
  for (const o of observations) t.same(fhirErrors(o), [], o.id)
  t.same(observations.map((o) => o.code.coding![0]!.code), ['85354-9', '8867-4', '8480-6', '8462-4', '8480-6'])
  // Incremental: a group is complete once the next instant begins.
  const grouper = createReadingGrouper()
  t.same(grouper.push(readings[0]!), [])
  t.same(grouper.push(readings[1]!), [])
  t.same(grouper.push(readings[2]!), [])
  t.equal(grouper.push(readings[3]!).length, 2)
  t.equal(grouper.flush().length, 1)
})

t.test('a page of groups never splits a BP pair and always makes progress', async (t) => {
  const rows = [r('heart_rate', 70, '/min', 3000), r('bp_diastolic', 80, 'mm[Hg]', 2000)]
  const held = pageOfGroups(rows, 5, true)
  t.same(held.groups.map((g) => g.length), [1], 'a diastolic at the end may have its systolic next')
  t.equal(held.last?.metric, 'heart_rate')
  const end = pageOfGroups(rows, 5, false)
  t.equal(end.groups.length, 2)
  t.equal(end.last, null, 'no next page')
  const alone = pageOfGroups([r('bp_diastolic', 80, 'mm[Hg]', 2000)], 1, true)
  t.equal(alone.groups.length, 1, 'a lone first group is served rather than stalling')
})

t.test('NEWS2 sub-scores are claimed only when they add up to the stored total', async (t) => {
  const at = 10_000_000
  const inputs = [
    r('resp_rate', 22, '/min', at), r('spo2', 95, '%', at - 60_000), r('o2_supplemental', 0, '1', at),
    r('bp_systolic', 105, 'mm[Hg]', at), r('heart_rate', 95, '/min', at), r('consciousness', 0, '1', at), r('body_temp', 38.5, 'Cel', at),
    r('heart_rate', 140, '/min', at - 7_200_000) // stale: outside the hour
  ]
  const score = r('news2_score', 6, '{score}', at)
  const breakdown = news2Breakdown(score, inputs, 3_600_000, 1)
  t.same(breakdown, { subScores: { resp_rate: 2, spo2: 1, o2_supplemental: 0, bp_systolic: 1, heart_rate: 1, consciousness: 0, body_temp: 1 }, spo2Scale: 1 })
  const observation = observationOf([score], breakdown)
  t.same(fhirErrors(observation), [])
  t.equal(observation.component!.length, 7)
  t.equal(news2Breakdown({ ...score, value: 7 }, inputs, 3_600_000, 1), null, 'another total: no components')
  t.equal(news2Breakdown(score, inputs.slice(1), 3_600_000, 1), null, 'a parameter missing: no components')
  const scale2 = news2Breakdown({ ...score, value: 5 }, inputs, 3_600_000, 2)
  t.equal(scale2?.subScores.spo2, 0, 'scale 2 on air')
  t.equal(observationOf([{ ...score, value: 5 }], scale2).component!.find((c) => c.code.coding![0]!.code === '1104321000000108')?.valueInteger, 0)
})

t.test('Patient: record fields only when given', async (t) => {
  const bare = patientOf({ id: patientId, displayName: 'Ada' })
  t.same(fhirErrors(bare), [])
  const full = patientOf({ id: patientId, displayName: 'Ada' }, {
    dateOfBirth: '1950-01-02',
    medicalCard: { number: 'X1', issuer: 'Fund', validUntil: '2030-01-01' },
    addresses: [{ kind: 'mailing', line1: 'PO Box 1', city: 'York', postalCode: 'YO1', country: 'GB' }],
    emergencyContacts: [{ name: 'Bob', relationship: 'son', phone: '+441234567', email: 'bob@example.org' }],
    primaryCareProvider: { name: 'Dr Who', organization: 'Clinic' }
  })
  t.same(fhirErrors(full), [])
  t.match(full, { birthDate: '1950-01-02', address: [{ type: 'postal', city: 'York' }], generalPractitioner: [{ display: 'Dr Who (Clinic)' }] })
})

t.test('OperationOutcome: issue type by status, Vigil code in details', async (t) => {
  for (const [status, type] of [[400, 'invalid'], [401, 'login'], [403, 'forbidden'], [404, 'not-found'], [429, 'throttled'], [500, 'exception'], [503, 'transient']] as const) {
    const outcome = operationOutcomeOf(status, { code: 'VIGIL_ERR_X', message: 'm', requestId: 'r1' }) as any
    t.same(fhirErrors(outcome), [])
    t.equal(outcome.issue[0].code, type)
  }
})

t.test('search parameters', async (t) => {
  t.same(dateRange('2025', 'date'), { start: Date.UTC(2025, 0, 1), end: Date.UTC(2026, 0, 1) })
  t.same(dateRange('2024-02', 'date'), { start: Date.UTC(2024, 1, 1), end: Date.UTC(2024, 2, 1) })
  t.same(dateRange('2025-01-31', 'date'), { start: Date.UTC(2025, 0, 31), end: Date.UTC(2025, 1, 1) })
  t.same(dateRange('2025-01-31T10:00+02:00', 'date'), { start: Date.UTC(2025, 0, 31, 8), end: Date.UTC(2025, 0, 31, 8, 1) })
  t.same(dateRange('2025-01-31T10:00:05.250Z', 'date'), { start: Date.UTC(2025, 0, 31, 10, 0, 5, 250), end: Date.UTC(2025, 0, 31, 10, 0, 5, 251) })
  for (const bad of ['2025-02-30', '2025-01-31T10:00', '25', '2025-1-1', '2025-01-31T24:00Z']) t.throws(() => dateRange(bad, 'date'), { code: 'VIGIL_ERR_VALIDATION' }, bad)
  t.same(dateInterval(['ge2025-01-01', 'lt2025-02'], 'date'), { from: Date.UTC(2025, 0, 1), to: Date.UTC(2025, 1, 1) })
  t.same(dateInterval(['gt2025-01-01', 'le2025-01-03'], 'date'), { from: Date.UTC(2025, 0, 2), to: Date.UTC(2025, 0, 4) })
  t.same(dateInterval(['2025-01-01', 'ge2025-01-01T12:00Z'], 'date'), { from: Date.UTC(2025, 0, 1, 12), to: Date.UTC(2025, 0, 2) })
  t.same(tokensOf('http://loinc.org|8867-4,9279-1,|x', 'code'), [{ system: 'http://loinc.org', code: '8867-4' }, { system: undefined, code: '9279-1' }, { system: undefined, code: 'x' }])
  t.equal(patientIdOf(`Patient/${patientId.toUpperCase()}`, 'patient'), patientId)
  t.equal(patientIdOf(`https://x.example/fhir/R4/Patient/${patientId}`, 'patient'), patientId)
  t.throws(() => patientIdOf(`Device/${patientId}`, 'patient'), { code: 'VIGIL_ERR_VALIDATION' })
  t.same(metricsForCode('http://loinc.org', '85354-9')?.metrics, ['bp_diastolic', 'bp_systolic'])
  t.same(metricsForCode(undefined, '8867-4')?.metrics, ['heart_rate'])
  t.same(metricsForCode('urn:vigil:metric', 'glucose')?.codes, [{ system: 'http://loinc.org', code: '2339-0' }])
  t.equal(metricsForCode('http://snomed.info/sct', '8867-4'), undefined)
})
