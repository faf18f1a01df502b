// Issue 13 (also): the device list shows presence (connected, last reading, battery) to the people who run devices.
import t from 'tap'
import { startApiFixture } from '../helpers/api-deps.ts'
import { userWithLogin } from '../helpers/people.ts'

const { app, db, headers: admin } = await startApiFixture(t, 'device presence')
const integrator = await userWithLogin(app, admin, ['device-integrator'], 'integrator@example.org')
const register = async (mac: string) => (await app.inject({
  method: 'POST', url: '/v1/devices', headers: admin,
  payload: { name: 'Monitor', mac, firmwareVersion: '1', softwareVersion: '1', startedAt: '2025-01-01' }
})).json().id as string
const seen = await register('02:00:00:00:00:01')
const never = await register('02:00:00:00:00:02')
// What alerts/lifecycle/presence.ts keeps from the broker's connects, readings and status reports.
await db.pool.query(`INSERT INTO device_presence (device_id, connected, changed_at, last_reading_at, battery_percent, last_status_at)
  VALUES ($1, true, '2026-12-05T08:00:00Z', '2026-12-05T08:05:00Z', 42, '2026-12-05T08:04:00Z')`, [seen])

t.test('integrators and admins see each device\'s presence in the list and the detail', async (t) => {
  for (const [who, headers] of [['integrator', integrator.headers], ['admin', admin]] as const) {
    const list = await app.inject({ method: 'GET', url: '/v1/devices', headers })
    t.equal(list.statusCode, 200)
    const items = list.json().items as Array<{ id: string, presence: unknown }>
    t.same(items.find((d) => d.id === seen)?.presence, {
      connected: true, since: '2026-12-05T08:00:00.000Z', lastReadingAt: '2026-12-05T08:05:00.000Z', batteryPercent: 42, lastStatusAt: '2026-12-05T08:04:00.000Z'
    }, `${who}: connected, last reading, battery`)
    t.same(items.find((d) => d.id === never)?.presence, { connected: false, since: null, lastReadingAt: null, batteryPercent: null, lastStatusAt: null },
      `${who}: a device never connected`)
    const detail = await app.inject({ method: 'GET', url: `/v1/devices/${seen}`, headers })
    t.equal(detail.json().presence.batteryPercent, 42, `${who}: the detail too`)
  }
})
