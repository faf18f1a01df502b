import { Client } from 'fhir-kit-client'
import t from 'tap'
import { fhirErrors } from '../helpers/fhir-validation.ts'
import { adminToken, startTestVigil, telemetry } from '../helpers/vigil.ts'
import { waitFor } from '../helpers/wait.ts'

// A third-party FHIR client (fhir-kit-client 2.0.3) reads a patient's vitals from a running
// Vigil over HTTP: readings published by a device over MQTT, NEWS2 scored by the alert engine
// (with its sub-scores), the NEWS2 alert as a Flag; and the same vitals through a bulk $export,
// run by the process's own job runner.

const vigil = await startTestVigil()
t.teardown(() => vigil.close())
const { patientId, deviceId, password } = await vigil.provision()

const ts = Date.now() - 60_000
// NEWS2 chart 1: resp 22 → 2, SpO2 95 (scale 1) → 1, air → 0, systolic 105 → 1, pulse 95 → 1,
// alert → 0, 38.5 °C → 1: total 6, medium band.
const device = await vigil.connect(deviceId, password)
await device.publishAsync(`devices/${deviceId}/telemetry`, telemetry(1, [
  { metric: 'resp_rate', value: 22, unit: '/min', ts },
  { metric: 'spo2', value: 95, unit: '%', ts },
  { metric: 'o2_supplemental', value: 0, unit: '1', ts },
  { metric: 'bp_systolic', value: 105, unit: 'mm[Hg]', ts },
  { metric: 'bp_diastolic', value: 70, unit: 'mm[Hg]', ts },
  { metric: 'heart_rate', value: 95, unit: '/min', ts },
  { metric: 'consciousness', value: 0, unit: '1', ts },
  { metric: 'body_temp', value: 38.5, unit: 'Cel', ts }
]), { qos: 1 })
await device.endAsync()
await waitFor('the NEWS2 score', async () => (await vigil.api<any>('GET', `/v1/patients/${patientId}/readings?metric=news2_score`)).body.items.length === 1)

const client = new Client({ baseUrl: `http://127.0.0.1:${vigil.httpPort}/fhir/R4`, bearerToken: adminToken })

t.test('the client reads the CapabilityStatement and the Patient', async (t) => {
  const capability: any = await client.capabilityStatement()
  t.equal(capability.resourceType, 'CapabilityStatement')
  t.same(fhirErrors(capability), [])
  t.same(capability.rest[0].resource.map((r: any) => r.type), ['Patient', 'Observation', 'Device', 'Flag', 'Group'], 'Group: bulk export of a care team')
  const patient: any = await client.read({ resourceType: 'Patient', id: patientId })
  t.same(fhirErrors(patient), [])
  t.same(patient.name, [{ use: 'usual', text: 'Test Patient' }])
})

t.test('the client pages through the patient\'s vital signs', async (t) => {
  const observations: any[] = []
  let bundle: any = await client.search({ resourceType: 'Observation', searchParams: { patient: patientId, _count: 2, _sort: '-date' } })
  let pages = 0
  while (bundle !== undefined && pages < 20) {
    t.same(fhirErrors(bundle), [], `page ${pages + 1} conforms to R4`)
    observations.push(...(bundle.entry ?? []).map((e: any) => e.resource))
    pages++
    bundle = await client.nextPage({ bundle })
  }
  t.ok(pages > 1, 'more than one page')
  // Seven readings and a BP pair become seven Observations; NEWS2 the eighth.
  const codes = observations.map((o) => o.code.coding[0].code).sort()
  t.same(codes, ['1104051000000101', '2708-6', '85354-9', '8310-5', '8867-4', '9279-1', 'consciousness', 'o2_supplemental'].sort())
  const panel = observations.find((o) => o.code.coding[0].code === '85354-9')
  t.same(panel.component.map((c: any) => c.valueQuantity.value), [105, 70])
  t.equal(panel.device.reference, `Device/${deviceId}`)
  const news2 = observations.find((o) => o.code.coding[0].code === '1104051000000101')
  t.equal(news2.valueQuantity.value, 6)
  t.equal(news2.effectiveDateTime, new Date(ts).toISOString())
  const sub = Object.fromEntries(news2.component.map((c: any) => [c.code.coding[0].code, c.valueInteger]))
  t.same(sub, {
    1104301000000104: 2, // respiration rate
    1104311000000102: 1, // SpO2 scale 1
    1104331000000105: 0, // air or oxygen
    1104341000000101: 1, // systolic blood pressure
    1104351000000103: 1, // pulse
    1104361000000100: 0, // consciousness
    1104371000000107: 1 // temperature
  })
  const heartRate: any = await client.search({ resourceType: 'Observation', searchParams: { patient: `Patient/${patientId}`, code: 'http://loinc.org|8867-4' } })
  t.same(heartRate.entry.map((e: any) => e.resource.valueQuantity.value), [95])
})

t.test('the client reads the device and the open NEWS2 alert as a Flag', async (t) => {
  const devices: any = await client.search({ resourceType: 'Device', searchParams: { patient: patientId } })
  t.same(fhirErrors(devices), [])
  t.same(devices.entry.map((e: any) => e.resource.id), [deviceId])
  const flags: any = await waitFor('the NEWS2 alert', async () => {
    const bundle: any = await client.search({ resourceType: 'Flag', searchParams: { patient: patientId } })
    return (bundle.entry ?? []).length > 0 ? bundle : undefined
  })
  t.same(fhirErrors(flags), [])
  const flag = flags.entry.find((e: any) => e.resource.code.coding[0].code === 'news2').resource
  t.equal(flag.status, 'active')
  t.equal(flag.subject.reference, `Patient/${patientId}`)
  const read: any = await client.read({ resourceType: 'Flag', id: flag.id })
  t.same(read, flag)
})

t.test('a refusal reaches the client as an OperationOutcome', async (t) => {
  const anonymous = new Client({ baseUrl: `http://127.0.0.1:${vigil.httpPort}/fhir/R4` })
  const err: any = await anonymous.read({ resourceType: 'Patient', id: patientId }).catch((e: unknown) => e)
  t.equal(err.response?.status, 401)
  t.equal(err.response?.data?.resourceType, 'OperationOutcome')
})

t.test('the running Vigil serves a bulk $export of the same vitals', async (t) => {
  const base = `http://127.0.0.1:${vigil.httpPort}/fhir/R4`
  const auth = { authorization: `Bearer ${adminToken}` }
  const kickOff = await fetch(`${base}/Patient/$export?_type=Patient,Observation,Flag`, { headers: { ...auth, prefer: 'respond-async', accept: 'application/fhir+json' } })
  t.equal(kickOff.status, 202)
  const status = kickOff.headers.get('content-location')!
  const manifest = await waitFor('the manifest', async () => {
    const res = await fetch(status, { headers: auth })
    return res.status === 200 ? await res.json() as any : undefined
  }, 60_000)
  t.same(manifest.output.map((o: any) => o.type), ['Patient', 'Observation', 'Flag'])
  const observations: any[] = []
  for (const o of manifest.output.filter((x: any) => x.type === 'Observation')) {
    const res = await fetch(o.url, { headers: auth })
    t.equal(res.headers.get('content-type'), 'application/fhir+ndjson')
    for (const line of (await res.text()).split('\n').filter((l) => l !== '')) observations.push(JSON.parse(line))
  }
  t.ok(observations.length >= 8, 'every vital sign and the NEWS2 score')
  t.ok(observations.every((o) => o.subject.reference === `Patient/${patientId}`))
  t.ok(observations.some((o) => o.code.coding[0].code === '85354-9'), 'the BP panel')
  for (const o of observations) if (fhirErrors(o).length > 0) t.same(fhirErrors(o), [], o.id)
  t.equal((await fetch(status, { method: 'DELETE', headers: auth })).status, 202)
  t.equal((await fetch(status, { headers: auth })).status, 404)
})
