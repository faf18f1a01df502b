import pino from 'pino'
import t from 'tap'
import { buildApi } from '../api/app.ts'
import { startApiFixture } from './helpers/api-deps.ts'

const { log, deps, app, token, headers } = await startApiFixture(t, 'credentials test')

const unknownId = '00000000-0000-4000-8000-000000000000'
const device = await deps.devices.create({
  name: 'Thermometer', mac: '02:00:00:00:bb:01', firmwareVersion: '1', softwareVersion: '1', startedAt: '2025-01-01T00:00:00Z'
}, null)
const url = `/v1/devices/${device.id}/credentials`

t.test('issue, rotate and revoke a device credential', async (t) => {
  const revoked: string[] = []
  deps.devices.events.on('credentials-revoked', (id: string) => revoked.push(id))

  const first = await app.inject({ method: 'POST', url, headers })
  t.equal(first.statusCode, 201)
  t.equal(first.headers['cache-control'], 'no-store')
  const one = first.json()
  t.equal(one.username, device.id)
  t.match(one.password, /^vgl_[A-Za-z0-9_-]{43}$/)
  t.type(await deps.devices.authenticate(device.id, one.password), 'string', 'the password works over MQTT auth')

  const second = await app.inject({ method: 'POST', url, headers })
  t.equal(second.statusCode, 201)
  const two = second.json()
  t.not(two.password, one.password, 'rotation gives a new secret')
  t.equal(await deps.devices.authenticate(device.id, one.password), null, 'the old one stops working')
  t.type(await deps.devices.authenticate(device.id, two.password), 'string')
  t.same(revoked, [device.id], 'rotation ends the old credential\'s sessions')

  const del = await app.inject({ method: 'DELETE', url, headers })
  t.equal(del.statusCode, 204)
  t.equal(del.body, '')
  t.equal(await deps.devices.authenticate(device.id, two.password), null)

  const again = await app.inject({ method: 'DELETE', url, headers })
  t.equal(again.statusCode, 404)
  t.equal(again.json().code, 'VIGIL_ERR_NOT_FOUND')
})

t.test('unknown devices', async (t) => {
  for (const method of ['POST', 'DELETE'] as const) {
    const res = await app.inject({ method, url: `/v1/devices/${unknownId}/credentials`, headers })
    t.equal(res.statusCode, 404, method)
    t.equal(res.json().code, 'VIGIL_ERR_UNKNOWN_DEVICE', method)
  }
})

t.test('the password never reaches the logs', async (t) => {
  const lines: string[] = []
  const logged = pino({ level: 'trace' }, { write: (line: string) => { lines.push(line) } })
  const observed = await buildApi({ ...deps, log: logged })
  t.teardown(() => observed.close())
  const ok = await observed.inject({ method: 'POST', url: `${url}?note=secret-in-query`, headers })
  t.equal(ok.statusCode, 201)
  const all = lines.join('')
  t.notMatch(all, ok.json().password)
  t.notMatch(all, token, 'nor the bearer token')
  t.notMatch(all, 'secret-in-query', 'nor query strings')
  t.match(all, '/v1/devices/:id/credentials', 'the route pattern is logged')
})
