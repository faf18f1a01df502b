import t from 'tap'
import { startApiFixture } from '../helpers/api-deps.ts'
import { newPatient, onCareTeam, userWithLogin } from '../helpers/people.ts'

const { db, deps, app, headers } = await startApiFixture(t, 'devices test', {
  apiOptions: { rateLimitPerMinute: 1_000_000, unauthenticatedRateLimitPerMinute: 1_000_000 }
})
// Owners are users (security pass F6): one that exists, for the tests that set an owner.
const ownerUser = await userWithLogin(app, headers, ['device-integrator'], 'device.owner@example.org')

let macCounter = 0
function newDevice (overrides: Record<string, unknown> = {}): Record<string, unknown> {
  macCounter++
  return {
    name: 'Oximeter',
    mac: `02:00:00:00:00:${macCounter.toString(16).padStart(2, '0')}`,
    firmwareVersion: '1.0.0',
    softwareVersion: '2.0.0',
    startedAt: '2025-01-15',
    ...overrides
  }
}

async function createDevice (overrides: Record<string, unknown> = {}) {
  const res = await app.inject({ method: 'POST', url: '/v1/devices', headers, payload: newDevice(overrides) })
  if (res.statusCode !== 201) throw new Error(`device not created: ${res.body}`)
  return res.json()
}

t.test('register a device', async (t) => {
  const owner = ownerUser.id
  const res = await app.inject({
    method: 'POST', url: '/v1/devices', headers,
    payload: newDevice({ mac: 'AA:BB:CC:00:11:22', startedAt: '2025-03-01T08:00:00+01:00', ownerUserId: owner })
  })
  t.equal(res.statusCode, 201)
  t.match(res.json(), {
    id: /^[0-9a-f-]{36}$/,
    name: 'Oximeter',
    mac: 'aa:bb:cc:00:11:22',
    ownerUserId: owner,
    assignedByUserId: null,
    firmwareVersion: '1.0.0',
    softwareVersion: '2.0.0',
    startedAt: '2025-03-01T07:00:00.000Z',
    patientId: null
  })
})

t.test('every accepted MAC spelling is stored normalized', async (t) => {
  const table: Array<[string, string]> = [
    ['02:1A:00:00:00:01', '02:1a:00:00:00:01'],
    ['02-1a-00-00-00-02', '02:1a:00:00:00:02'],
    ['021a.0000.0003', '02:1a:00:00:00:03'],
    ['021A00000004', '02:1a:00:00:00:04'],
    ['02:1A:00:FF:FE:00:00:05', '02:1a:00:ff:fe:00:00:05'],
    ['021a00fffe000006', '02:1a:00:ff:fe:00:00:06']
  ]
  for (const [mac, stored] of table) {
    const res = await app.inject({ method: 'POST', url: '/v1/devices', headers, payload: newDevice({ mac }) })
    t.equal(res.statusCode, 201, mac)
    t.equal(res.json().mac, stored, mac)
  }
})

t.test('a MAC registered already is 409 in any spelling', async (t) => {
  await createDevice({ mac: '02:2b:00:00:00:01' })
  for (const mac of ['02:2b:00:00:00:01', '02-2B-00-00-00-01', '022b.0000.0001']) {
    const res = await app.inject({ method: 'POST', url: '/v1/devices', headers, payload: newDevice({ mac }) })
    t.equal(res.statusCode, 409, mac)
    t.equal(res.json().code, 'VIGIL_ERR_DUPLICATE_MAC', mac)
  }
})

t.test('an invalid MAC is 400 naming the field', async (t) => {
  for (const mac of ['02:2b:00:00:00', 'zz:zz:zz:zz:zz:zz', '02:2b-00:00:00:01', '']) {
    const res = await app.inject({ method: 'POST', url: '/v1/devices', headers, payload: newDevice({ mac }) })
    t.equal(res.statusCode, 400, mac)
    t.equal(res.json().code, 'VIGIL_ERR_VALIDATION', mac)
    t.equal(res.json().details[0].path, 'body/mac', mac)
  }
})

t.test('startedAt: a date or date-time, not in the future (5 minutes of skew allowed)', async (t) => {
  const inAMinute = new Date(Date.now() + 60_000).toISOString()
  const ok = await app.inject({ method: 'POST', url: '/v1/devices', headers, payload: newDevice({ startedAt: inAMinute }) })
  t.equal(ok.statusCode, 201, 'within skew')

  const refused = [
    new Date(Date.now() + 10 * 60_000).toISOString(),
    new Date(Date.now() + 2 * 86_400_000).toISOString().slice(0, 10),
    '2025-02-30',
    '2025-03-01T08:00:00',
    'last tuesday'
  ]
  for (const startedAt of refused) {
    const res = await app.inject({ method: 'POST', url: '/v1/devices', headers, payload: newDevice({ startedAt }) })
    t.equal(res.statusCode, 400, startedAt)
    t.equal(res.json().code, 'VIGIL_ERR_VALIDATION', startedAt)
    t.equal(res.json().details[0].path, 'body/startedAt', startedAt)
  }
})

t.test('other invalid device bodies', async (t) => {
  const cases: Array<[string, Record<string, unknown>]> = [
    ['missing name', { name: undefined }],
    ['blank name', { name: '  ' }],
    ['version with spaces around', { firmwareVersion: ' 1.0 ' }],
    ['owner not a uuid', { ownerUserId: 'bob' }],
    ['unknown field', { colour: 'blue' }]
  ]
  for (const [name, overrides] of cases) {
    const res = await app.inject({ method: 'POST', url: '/v1/devices', headers, payload: newDevice(overrides) })
    t.equal(res.statusCode, 400, name)
    t.equal(res.json().code, 'VIGIL_ERR_VALIDATION', name)
  }
})

t.test('PATCH records version changes in the history', async (t) => {
  const device = await createDevice()
  const url = `/v1/devices/${device.id}`

  const renamed = await app.inject({ method: 'PATCH', url, headers, payload: { name: 'Ward 3 oximeter' } })
  t.equal(renamed.statusCode, 200)
  t.equal(renamed.json().name, 'Ward 3 oximeter')

  const upgraded = await app.inject({ method: 'PATCH', url, headers, payload: { firmwareVersion: '1.1.0' } })
  t.equal(upgraded.statusCode, 200)
  t.match(upgraded.json(), { firmwareVersion: '1.1.0', softwareVersion: '2.0.0' })
  const again = await app.inject({ method: 'PATCH', url, headers, payload: { softwareVersion: '2.1.0', firmwareVersion: '1.1.0' } })
  t.equal(again.statusCode, 200)

  const detail = await app.inject({ method: 'GET', url, headers })
  t.equal(detail.statusCode, 200)
  t.match(detail.json().versions, [
    { firmwareVersion: '1.0.0', softwareVersion: '2.0.0', changedAt: String },
    { firmwareVersion: '1.1.0', softwareVersion: '2.0.0' },
    { firmwareVersion: '1.1.0', softwareVersion: '2.1.0' }
  ])
  t.equal(detail.json().versions.length, 3, 'a rename is not a version')
  t.same(detail.json().assignments, [])

  const owner = ownerUser.id
  const owned = await app.inject({ method: 'PATCH', url, headers, payload: { ownerUserId: owner } })
  t.equal(owned.json().ownerUserId, owner)
  const cleared = await app.inject({ method: 'PATCH', url, headers, payload: { ownerUserId: null } })
  t.equal(cleared.json().ownerUserId, null, 'null clears the owner')
})

t.test('PATCH validation and unknown devices', async (t) => {
  const device = await createDevice()
  for (const [name, payload] of [['empty', {}], ['typo', { firmwareVersoin: '9' }], ['mac is not patchable', { mac: '02:00:00:00:00:99' }]] as const) {
    const res = await app.inject({ method: 'PATCH', url: `/v1/devices/${device.id}`, headers, payload })
    t.equal(res.statusCode, 400, name)
    t.equal(res.json().code, 'VIGIL_ERR_VALIDATION', name)
  }
  const unknown = await app.inject({
    method: 'PATCH', url: '/v1/devices/00000000-0000-4000-8000-000000000000', headers, payload: { name: 'x' }
  })
  t.equal(unknown.statusCode, 404)
  t.equal(unknown.json().code, 'VIGIL_ERR_UNKNOWN_DEVICE')
  const get = await app.inject({ method: 'GET', url: '/v1/devices/00000000-0000-4000-8000-000000000000', headers })
  t.equal(get.statusCode, 404)
  t.equal(get.json().code, 'VIGIL_ERR_UNKNOWN_DEVICE')
  const malformed = await app.inject({ method: 'GET', url: '/v1/devices/42', headers })
  t.equal(malformed.statusCode, 400)
  t.equal(malformed.json().code, 'VIGIL_ERR_VALIDATION')
})

t.test('list pages through every device exactly once', async (t) => {
  const { rows } = await db.pool.query('SELECT id::text FROM devices ORDER BY id')
  t.ok(rows.length > 5)
  const seen: string[] = []
  let cursor: string | null = null
  do {
    const url: string = `/v1/devices?limit=4${cursor === null ? '' : `&cursor=${cursor}`}`
    const res = await app.inject({ method: 'GET', url, headers })
    t.equal(res.statusCode, 200)
    seen.push(...res.json().items.map((d: { id: string }) => d.id))
    cursor = res.json().nextCursor
  } while (cursor !== null && seen.length <= rows.length)
  t.same(seen, rows.map((r) => r.id))

  const bad = await app.inject({ method: 'GET', url: '/v1/devices?cursor=zzz', headers })
  t.equal(bad.json().code, 'VIGIL_ERR_BAD_CURSOR')
})

// Security pass F6: ownerUserId was any UUID, unchecked, and shown to every devices:read role
// even when the owner is a patient (so an integrator learnt which patient owns which device).
t.test('a device owner is an existing active user; a patient owner is shown only to who reaches them', async (t) => {
  const unknownUser = '5f0c3a3e-8d7b-4c1a-9f57-1d2b3c4d5e6f'
  const refused = await app.inject({ method: 'POST', url: '/v1/devices', headers, payload: newDevice({ ownerUserId: unknownUser }) })
  t.equal(refused.statusCode, 404, 'was 201: any UUID accepted as owner')
  t.equal(refused.json().code, 'VIGIL_ERR_UNKNOWN_USER')
  const plain = await createDevice()
  const patched = await app.inject({ method: 'PATCH', url: `/v1/devices/${plain.id}`, headers, payload: { ownerUserId: unknownUser } })
  t.equal(patched.statusCode, 404)
  t.equal(patched.json().code, 'VIGIL_ERR_UNKNOWN_USER')
  const retired = await userWithLogin(app, headers, ['device-integrator'], 'retired.owner@example.org')
  t.equal((await app.inject({ method: 'PATCH', url: `/v1/users/${retired.id}`, headers, payload: { active: false } })).statusCode, 200)
  const inactive = await app.inject({ method: 'PATCH', url: `/v1/devices/${plain.id}`, headers, payload: { ownerUserId: retired.id } })
  t.equal(inactive.statusCode, 404, 'an inactive user owns nothing new')
  t.equal(inactive.json().code, 'VIGIL_ERR_UNKNOWN_USER')

  const patient = await newPatient(app, headers, 'Owning Patient')
  const integrator = await userWithLogin(app, headers, ['device-integrator'], 'owner.integrator@example.org')
  const teamNurse = await userWithLogin(app, headers, ['nurse'], 'owner.team.nurse@example.org')
  await onCareTeam(app, headers, teamNurse.id, patient)
  const otherNurse = await userWithLogin(app, headers, ['nurse'], 'owner.other.nurse@example.org')
  const owned = await app.inject({ method: 'POST', url: '/v1/devices', headers, payload: newDevice({ ownerUserId: patient }) })
  t.equal(owned.statusCode, 201, 'a patient may own a device')
  const id = owned.json().id as string
  t.equal(owned.json().ownerUserId, patient, 'the admin sees the owner')

  for (const [who, h, expected] of [['integrator', integrator.headers, null], ['nurse off the team', otherNurse.headers, null], ['care team nurse', teamNurse.headers, patient]] as const) {
    const one = await app.inject({ method: 'GET', url: `/v1/devices/${id}`, headers: h })
    t.equal(one.statusCode, 200, who)
    t.equal(one.json().ownerUserId, expected, `${who}: GET /v1/devices/{id}`)
    const list = await app.inject({ method: 'GET', url: '/v1/devices?limit=1000', headers: h })
    t.equal(list.json().items.find((d: { id: string }) => d.id === id).ownerUserId, expected, `${who}: GET /v1/devices`)
  }
  const integratorPatch = await app.inject({ method: 'PATCH', url: `/v1/devices/${id}`, headers: integrator.headers, payload: { name: 'Renamed' } })
  t.equal(integratorPatch.json().ownerUserId, null, 'nor in a PATCH answer')
  const staff = await app.inject({ method: 'PATCH', url: `/v1/devices/${plain.id}`, headers: integrator.headers, payload: { ownerUserId: ownerUser.id } })
  t.equal(staff.json().ownerUserId, ownerUser.id, 'an owner who is not a patient is shown')
})
