import t from 'tap'
import type { Test } from 'tap'
import type { StoredReading } from '../../readings/reading.ts'
import { startApiFixture } from '../helpers/api-deps.ts'
import { fhirErrors } from '../helpers/fhir-validation.ts'
import { onCareTeam, patientWithLogin, userWithLogin } from '../helpers/people.ts'

// FHIR R4 read and search (issue 17) through app.inject: every resource answered is checked
// against the R4 definitions (test/helpers/fhir-validation.ts).

const { deps, app, headers: admin } = await startApiFixture(t, 'fhir test', {
  apiOptions: { rateLimitPerMinute: 1_000_000, unauthenticatedRateLimitPerMinute: 1_000_000, maxEventLoopDelayMs: 0 }
})

const patient = await deps.patients.create('Ada Fhir')
const other = await deps.patients.create('Off Team')
const device = await deps.devices.create({
  name: 'Ward oximeter', mac: 'aa:bb:cc:00:11:22', firmwareVersion: '1.2.3', softwareVersion: '4.5.6', startedAt: '2025-01-01T00:00:00.000Z'
}, null)
await deps.devices.assign(device.id, patient.id, new Date('2025-01-01T00:00:00Z'), null)
const recordPut = await app.inject({
  method: 'PUT',
  url: `/v1/patients/${patient.id}/record`,
  headers: admin,
  payload: {
    dateOfBirth: '1950-03-04',
    medicalCard: { number: 'MC-12345', issuer: 'Health Fund' },
    medicalHistory: { gender: 'female' },
    addresses: [{ kind: 'home', line1: '1 High Street', city: 'Leeds', postalCode: 'LS1 1AA', country: 'GB' }]
  }
})
if (recordPut.statusCode !== 200) throw new Error(`record: ${recordPut.body}`)

const base = Date.UTC(2025, 10, 26, 9, 0, 0)
const at = (minutes: number) => base + minutes * 60_000
const r = (metric: string, value: number, unit: string, ts: number, patientId = patient.id): StoredReading =>
  ({ patientId, deviceId: device.id, metric, value, unit, ts, seq: null })
const seeded: StoredReading[] = [
  r('heart_rate', 72, '/min', at(0)),
  r('spo2', 97, '%', at(0)),
  r('body_temp', 37.1, 'Cel', at(0)),
  r('bp_systolic', 121, 'mm[Hg]', at(1)),
  r('bp_diastolic', 79, 'mm[Hg]', at(1)),
  r('bp_systolic', 135, 'mm[Hg]', at(2)),
  r('resp_rate', 16, '/min', at(3)),
  r('body_weight', 70.5, 'kg', at(4)),
  r('body_height', 170, 'cm', at(4)),
  r('bmi', 24.4, 'kg/m2', at(4)),
  r('glucose', 98, 'mg/dL', at(5)),
  r('heart_rate', 80, '/min', at(6)),
  r('bp_systolic', 118, 'mm[Hg]', at(7)),
  r('bp_diastolic', 76, 'mm[Hg]', at(7)),
  { ...r('news2_score', 1, '{score}', at(8)), deviceId: '00000000-0000-0000-0000-000000000000' }
]
await deps.readings.write([...seeded, r('heart_rate', 99, '/min', at(0), other.id)])
// 15 readings, two BP pairs: 13 Observations.
const expectedCount = seeded.length - 2

const nurse = await userWithLogin(app, admin, ['nurse'], 'nurse@fhir.test')
await onCareTeam(app, admin, nurse.id, patient.id)
const developer = await userWithLogin(app, admin, ['developer'], 'dev@fhir.test')
const role = await app.inject({ method: 'POST', url: '/v1/roles', headers: admin, payload: { name: 'Names only', category: 'clinician', permissions: ['patients:read', 'readings:read'] } })
if (role.statusCode !== 201) throw new Error(`custom role: ${role.body}`)
const namesOnly = await userWithLogin(app, admin, [role.json().id], 'names@fhir.test')
await onCareTeam(app, admin, namesOnly.id, patient.id)

async function get (url: string, headers: Record<string, string> = admin) {
  const res = await app.inject({ method: 'GET', url, headers })
  return { status: res.statusCode, type: res.headers['content-type'], body: res.json(), headers: res.headers }
}

/** The path and query of a Bundle link (links are absolute). */
const pathOf = (url: string) => { const u = new URL(url); return u.pathname + u.search }

function valid (t: Test, resource: unknown, what: string) {
  t.same(fhirErrors(resource), [], `${what} conforms to R4`)
}

t.test('metadata: a public CapabilityStatement of what is implemented', async (t) => {
  const res = await get('/fhir/R4/metadata', {})
  t.equal(res.status, 200)
  t.match(res.type, /^application\/fhir\+json/)
  t.equal(res.body.resourceType, 'CapabilityStatement')
  t.equal(res.body.fhirVersion, '4.0.1')
  valid(t, res.body, 'CapabilityStatement')
  const types = res.body.rest[0].resource.map((r: { type: string }) => r.type)
  t.same(types, ['Patient', 'Observation', 'Device'], 'no Flag without the alert lifecycle')
  const observation = res.body.rest[0].resource.find((r: { type: string }) => r.type === 'Observation')
  t.same(observation.searchParam.map((p: { name: string }) => p.name), ['patient', 'subject', 'code', 'date'])
  t.ok(observation.supportedProfile.includes('http://hl7.org/fhir/StructureDefinition/bp'))
})

t.test('Observation search: every reading, vital-signs profiles, LOINC and UCUM, newest first', async (t) => {
  const res = await get(`/fhir/R4/Observation?patient=${patient.id}`)
  t.equal(res.status, 200)
  t.match(res.type, /^application\/fhir\+json/)
  valid(t, res.body, 'searchset')
  t.equal(res.body.type, 'searchset')
  const observations = res.body.entry.map((e: { resource: Record<string, any> }) => e.resource)
  t.equal(observations.length, expectedCount)
  for (const o of observations) {
    valid(t, o, `Observation ${o.code.coding[0].code}`)
    t.equal(o.subject.reference, `Patient/${patient.id}`)
  }
  const times = observations.map((o: { effectiveDateTime: string }) => o.effectiveDateTime)
  t.same(times, [...times].sort().reverse(), 'newest first')
  const byCode = (code: string) => observations.filter((o: any) => o.code.coding[0].code === code)
  const hr = byCode('8867-4')
  t.equal(hr.length, 2)
  t.same(hr[1].meta.profile, ['http://hl7.org/fhir/StructureDefinition/heartrate'])
  t.same(hr[1].valueQuantity, { value: 72, unit: '/min', system: 'http://unitsofmeasure.org', code: '/min' })
  t.same(hr[1].category[0].coding[0].code, 'vital-signs')
  t.equal(hr[1].device.reference, `Device/${device.id}`)
  t.equal(hr[1].effectiveDateTime, new Date(at(0)).toISOString())
  const panels = byCode('85354-9')
  t.equal(panels.length, 2, 'systolic and diastolic taken together are one panel')
  t.same(panels[1].meta.profile, ['http://hl7.org/fhir/StructureDefinition/bp'])
  t.equal(panels[1].valueQuantity, undefined)
  t.same(panels[1].component.map((c: any) => [c.code.coding[0].code, c.valueQuantity.value, c.valueQuantity.code]),
    [['8480-6', 121, 'mm[Hg]'], ['8462-4', 79, 'mm[Hg]']])
  const lone = byCode('8480-6')
  t.equal(lone.length, 1, 'a systolic alone stays a systolic')
  t.equal(lone[0].valueQuantity.value, 135)
  t.same(byCode('2708-6')[0].meta.profile, ['http://hl7.org/fhir/StructureDefinition/oxygensat'])
  t.same(byCode('8310-5')[0].valueQuantity.code, 'Cel')
  t.same(byCode('29463-7')[0].meta.profile, ['http://hl7.org/fhir/StructureDefinition/bodyweight'])
  t.same(byCode('8302-2')[0].meta.profile, ['http://hl7.org/fhir/StructureDefinition/bodyheight'])
  t.same(byCode('39156-5')[0].meta.profile, ['http://hl7.org/fhir/StructureDefinition/bmi'])
  t.same(byCode('9279-1')[0].meta.profile, ['http://hl7.org/fhir/StructureDefinition/resprate'])
  t.equal(byCode('2339-0')[0].category[0].coding[0].code, 'laboratory')
  const news2 = byCode('1104051000000101')
  t.equal(news2.length, 1)
  t.equal(news2[0].code.coding[0].system, 'http://snomed.info/sct')
  t.equal(news2[0].device, undefined, 'a derived score names no device')
  t.notOk(res.body.link.some((l: { relation: string }) => l.relation === 'next'), 'one page')
  // Each Observation reads back by its id.
  for (const o of [hr[0], panels[0], lone[0], news2[0]]) {
    const read = await get(`/fhir/R4/Observation/${o.id}`)
    t.equal(read.status, 200)
    t.same(read.body, o, `read ${o.id}`)
  }
})

t.test('Observation search pages with next links that carry no PHI', async (t) => {
  const all = (await get(`/fhir/R4/Observation?patient=${patient.id}`)).body.entry.map((e: any) => e.resource.id)
  for (const count of [1, 2, 3, 5]) {
    const ids: string[] = []
    let url: string | undefined = `/fhir/R4/Observation?patient=Patient/${patient.id}&_count=${count}&_sort=-date`
    let pages = 0
    while (url !== undefined && pages < 50) {
      const res = await get(url)
      t.equal(res.status, 200)
      valid(t, res.body, 'page')
      t.ok((res.body.entry ?? []).length <= count)
      ids.push(...(res.body.entry ?? []).map((e: any) => e.resource.id))
      const next = res.body.link.find((l: { relation: string }) => l.relation === 'next')
      if (next !== undefined) {
        const q = new URL(next.url).searchParams
        t.same([...new Set(q.keys())].sort(), ['_count', '_cursor', '_sort', 'patient'])
        t.notMatch(next.url, /Ada|Fhir|MC-12345/)
      }
      url = next === undefined ? undefined : pathOf(next.url)
      pages++
    }
    t.same(ids, all, `_count=${count}: every Observation once, in order`)
  }
})

t.test('Observation search by code and date', async (t) => {
  const ids = async (query: string) => {
    const res = await get(`/fhir/R4/Observation?patient=${patient.id}&${query}`)
    t.equal(res.status, 200, query)
    return (res.body.entry ?? []).map((e: any) => [e.resource.code.coding[0].code, e.resource.effectiveDateTime])
  }
  t.same(await ids('code=http://loinc.org|8867-4'), [['8867-4', new Date(at(6)).toISOString()], ['8867-4', new Date(at(0)).toISOString()]])
  t.same(await ids('code=85354-9'), [['85354-9', new Date(at(7)).toISOString()], ['85354-9', new Date(at(1)).toISOString()]])
  t.same(await ids('code=8480-6'), [['8480-6', new Date(at(2)).toISOString()]], 'only the systolic taken alone')
  t.same(await ids('code=8867-4,9279-1'), [['8867-4', new Date(at(6)).toISOString()], ['9279-1', new Date(at(3)).toISOString()], ['8867-4', new Date(at(0)).toISOString()]])
  t.same(await ids('code=http://snomed.info/sct|8867-4'), [], 'a code under another system matches nothing')
  t.same(await ids(`code=8867-4&date=ge${new Date(at(1)).toISOString()}&date=lt${new Date(at(7)).toISOString()}`), [['8867-4', new Date(at(6)).toISOString()]])
  t.same((await ids('date=2025-11-26')).length, expectedCount, 'a day covers the whole day')
  t.same(await ids('date=lt2025-11-26'), [])
  t.same((await ids('date=gt2025-11-25&date=le2025-11-26')).length, expectedCount)
})

t.test('errors are OperationOutcomes with the right status', async (t) => {
  const cases: Array<[string, Record<string, string>, number, string]> = [
    ['/fhir/R4/Observation', admin, 400, 'VIGIL_ERR_VALIDATION'],
    [`/fhir/R4/Observation?patient=${patient.id}&foo=1`, admin, 400, 'VIGIL_ERR_VALIDATION'],
    [`/fhir/R4/Observation?patient=${patient.id}&_sort=date`, admin, 400, 'VIGIL_ERR_VALIDATION'],
    [`/fhir/R4/Observation?patient=${patient.id}&date=ne2025-01-01`, admin, 400, 'VIGIL_ERR_VALIDATION'],
    [`/fhir/R4/Observation?patient=${patient.id}&date=2025-13-01`, admin, 400, 'VIGIL_ERR_VALIDATION'],
    [`/fhir/R4/Observation?patient=${patient.id}&_count=0`, admin, 400, 'VIGIL_ERR_VALIDATION'],
    [`/fhir/R4/Observation?patient=${patient.id}&_cursor=nonsense!`, admin, 400, 'VIGIL_ERR_BAD_CURSOR'],
    ['/fhir/R4/Observation?patient=Device/x', admin, 400, 'VIGIL_ERR_VALIDATION'],
    [`/fhir/R4/Observation?patient=${patient.id}`, {}, 401, 'VIGIL_ERR_UNAUTHENTICATED'],
    [`/fhir/R4/Observation?patient=${patient.id}`, { authorization: 'Bearer wrong' }, 401, 'VIGIL_ERR_UNAUTHENTICATED'],
    [`/fhir/R4/Observation?patient=${patient.id}`, developer.headers, 403, 'VIGIL_ERR_FORBIDDEN'],
    [`/fhir/R4/Observation?patient=${other.id}`, nurse.headers, 404, 'VIGIL_ERR_UNKNOWN_PATIENT'],
    ['/fhir/R4/Observation?patient=00000000-0000-4000-8000-000000000000', nurse.headers, 404, 'VIGIL_ERR_UNKNOWN_PATIENT'],
    ['/fhir/R4/Observation/not-an-id', admin, 404, 'VIGIL_ERR_NOT_FOUND'],
    [`/fhir/R4/Patient/${other.id}`, nurse.headers, 404, 'VIGIL_ERR_UNKNOWN_PATIENT'],
    ['/fhir/R4/Patient?identifier=urn:oid:1.2.3|MC-12345', admin, 400, 'VIGIL_ERR_VALIDATION'],
    ['/fhir/R4/Encounter', admin, 404, 'VIGIL_ERR_NOT_FOUND']
  ]
  for (const [url, headers, status, code] of cases) {
    const res = await get(url, headers)
    t.equal(res.status, status, url)
    t.match(res.type, /^application\/fhir\+json/, url)
    t.equal(res.body.resourceType, 'OperationOutcome', url)
    t.equal(res.body.issue[0].details.coding[0].code, code, url)
    valid(t, res.body, `OperationOutcome for ${url}`)
    if (status === 401) t.equal(res.headers['www-authenticate'], 'Bearer realm="vigil"')
  }
  // Off-team and non-existent patients are answered alike (no probing).
  const offTeam = await get(`/fhir/R4/Patient/${other.id}`, nurse.headers)
  const missing = await get('/fhir/R4/Patient/00000000-0000-4000-8000-000000000000', nurse.headers)
  t.same(offTeam.body, missing.body)
})

t.test('Patient: the name for patients:read, the record\'s fields with phi:read', async (t) => {
  const full = await get(`/fhir/R4/Patient/${patient.id}`, nurse.headers)
  t.equal(full.status, 200)
  valid(t, full.body, 'Patient with record')
  t.same(full.body.name, [{ use: 'usual', text: 'Ada Fhir' }])
  t.equal(full.body.birthDate, '1950-03-04')
  t.equal(full.body.gender, 'female')
  t.equal(full.body.address[0].city, 'Leeds')
  t.ok(full.body.identifier.some((i: any) => i.value === 'MC-12345'))
  t.ok(full.body.identifier.some((i: any) => i.system === 'urn:ietf:rfc:3986' && i.value === `urn:uuid:${patient.id}`))

  const names = await get(`/fhir/R4/Patient/${patient.id}`, namesOnly.headers)
  t.equal(names.status, 200)
  valid(t, names.body, 'Patient without record')
  t.same(Object.keys(names.body).sort(), ['active', 'id', 'identifier', 'name', 'resourceType'])
  t.notMatch(JSON.stringify(names.body), /MC-12345|1950|Leeds/)

  const search = await get(`/fhir/R4/Patient?identifier=urn:ietf:rfc:3986|urn:uuid:${patient.id}`, nurse.headers)
  t.equal(search.status, 200)
  valid(t, search.body, 'Patient searchset')
  t.same(search.body.entry.map((e: any) => e.resource.id), [patient.id])
  t.equal(search.body.entry[0].fullUrl, `http://localhost:80/fhir/R4/Patient/${patient.id}`)
  const hidden = await get(`/fhir/R4/Patient?identifier=${other.id}`, nurse.headers)
  t.equal(hidden.status, 200)
  t.same(hidden.body.entry, [], 'an off-team patient is not found by a search')
  // By medical card number: only in a POST form body (PHI stays out of URLs), only with phi:read.
  const byCard = async (headers: Record<string, string>, form: string) => {
    const res = await app.inject({ method: 'POST', url: '/fhir/R4/Patient/_search', headers: { ...headers, 'content-type': 'application/x-www-form-urlencoded' }, payload: form })
    return { status: res.statusCode, body: res.json() }
  }
  const found = await byCard(nurse.headers, 'identifier=MC-12345')
  t.equal(found.status, 200)
  valid(t, found.body, 'POST _search searchset')
  t.same(found.body.entry.map((e: any) => e.resource.id), [patient.id])
  t.notMatch(JSON.stringify(found.body.link), /MC-12345/, 'the number is not echoed in a link')
  t.same((await byCard(namesOnly.headers, 'identifier=MC-12345')).body.entry, [], 'without phi:read no card lookup')
  t.same((await byCard(nurse.headers, `identifier=MC-12345&_id=${other.id}`)).body.entry, [], 'parameters are ANDed')
  t.equal((await byCard(nurse.headers, 'name=Ada')).status, 400)
  t.equal((await get('/fhir/R4/Patient?identifier=MC-12345', nurse.headers)).status, 400, 'a card number in a URL is refused')
  const list = await get('/fhir/R4/Patient', nurse.headers)
  t.same(list.body.entry.map((e: any) => e.resource.id), [patient.id], 'the nurse\'s patients')
  const paged = await get('/fhir/R4/Patient?_count=1', admin)
  t.equal(paged.body.entry.length, 1)
  const next = paged.body.link.find((l: any) => l.relation === 'next')
  const second = await get(pathOf(next.url), admin)
  t.equal(second.body.entry.length, 1)
  t.not(second.body.entry[0].resource.id, paged.body.entry[0].resource.id)
})

t.test('Device: MAC identifier, versions, the patient when visible', async (t) => {
  const res = await get(`/fhir/R4/Device/${device.id}`, nurse.headers)
  t.equal(res.status, 200)
  valid(t, res.body, 'Device')
  t.same(res.body.identifier[1], { type: { text: 'MAC address' }, system: 'http://hl7.org/fhir/sid/eui-48', value: 'AA-BB-CC-00-11-22' })
  t.same(res.body.version, [{ type: { text: 'firmware' }, value: '1.2.3' }, { type: { text: 'software' }, value: '4.5.6' }])
  t.same(res.body.patient, { reference: `Patient/${patient.id}` })
  const asDeveloper = await get(`/fhir/R4/Device/${device.id}`, developer.headers)
  t.equal(asDeveloper.status, 200)
  t.equal(asDeveloper.body.patient, undefined, 'a role that reaches no patient does not learn whose device it is')
  const search = await get(`/fhir/R4/Device?patient=${patient.id}`, nurse.headers)
  valid(t, search.body, 'Device searchset')
  t.same(search.body.entry.map((e: any) => e.resource.id), [device.id])
  t.equal((await get(`/fhir/R4/Device?patient=${other.id}`, nurse.headers)).status, 404)
  t.same((await get(`/fhir/R4/Device?patient=${other.id}`, admin)).body.entry, [])
})

t.test('FHIR reads are audited like /v1 reads', async (t) => {
  await get(`/fhir/R4/Observation?patient=${other.id}`, nurse.headers)
  const audit = await get(`/v1/audit?patientId=${other.id}&limit=100`)
  t.equal(audit.status, 200)
  t.ok(audit.body.items.some((e: any) => e.action === 'readings:read' && e.outcome === 'denied' && e.actorId === nurse.id), 'refusal audited')
  const own = await get(`/v1/audit?patientId=${patient.id}&limit=1000`)
  t.ok(own.body.items.some((e: any) => e.action === 'phi:read' && e.actorId === nurse.id && e.outcome === 'allowed'), 'record read audited as phi:read')

  // One row per Observation read, allowed or not, whether or not it read anything (a code naming no metric).
  const readingsRows = async (patientId: string): Promise<number> =>
    (await get(`/v1/audit?patientId=${patientId}&actorId=${nurse.id}&action=readings:read&limit=1000`)).body.items.length
  const [ownBefore, otherBefore] = [await readingsRows(patient.id), await readingsRows(other.id)]
  const searched = await get(`/fhir/R4/Observation?patient=${patient.id}`, nurse.headers)
  t.equal(searched.status, 200)
  const first = searched.body.entry?.[0]?.resource?.id as string | undefined
  if (first !== undefined) t.equal((await get(`/fhir/R4/Observation/${first}`, nurse.headers)).status, 200)
  t.equal((await get(`/fhir/R4/Observation?patient=${patient.id}&code=http://loinc.org|0000-0`, nurse.headers)).status, 200)
  t.equal((await get(`/fhir/R4/Observation?patient=${other.id}`, nurse.headers)).status, 404)
  t.equal(await readingsRows(patient.id) - ownBefore, first === undefined ? 2 : 3, 'one allowed row per read')
  t.equal(await readingsRows(other.id) - otherBefore, 1, 'one denied row')
})

t.test('roles × FHIR interactions: the permissions and relationships of /v1', async (t) => {
  const self = await patientWithLogin(app, admin, patient.id, 'ada@fhir.test')
  const scientist = await userWithLogin(app, admin, ['ml-scientist'], 'ml@fhir.test')
  const integrator = await userWithLogin(app, admin, ['device-integrator'], 'integrator@fhir.test')
  const callers: Record<string, Record<string, string>> = { self, nurse: nurse.headers, developer: developer.headers, scientist: scientist.headers, integrator: integrator.headers }
  // [own patient, off-team patient] per caller; 403: the role lacks the permission, 404: it lacks the relationship.
  const matrix: Array<[string, Record<string, [number, number]>]> = [
    ['/fhir/R4/Observation?patient={id}', { self: [200, 404], nurse: [200, 404], developer: [403, 403], scientist: [403, 403], integrator: [403, 403] }],
    ['/fhir/R4/Patient/{id}', { self: [200, 404], nurse: [200, 404], developer: [403, 403], scientist: [403, 403], integrator: [403, 403] }],
    ['/fhir/R4/Device?patient={id}', { self: [403, 403], nurse: [200, 404], developer: [404, 404], scientist: [403, 403], integrator: [404, 404] }]
  ]
  for (const [template, expected] of matrix) {
    for (const [who, [own, offTeam]] of Object.entries(expected)) {
      t.equal((await get(template.replace('{id}', patient.id), callers[who])).status, own, `${who} ${template} own`)
      t.equal((await get(template.replace('{id}', other.id), callers[who])).status, offTeam, `${who} ${template} off-team`)
    }
  }
  const ownRecord = await get(`/fhir/R4/Patient/${patient.id}`, self)
  t.equal(ownRecord.body.birthDate, '1950-03-04', 'a patient reads their own record fields')
})
