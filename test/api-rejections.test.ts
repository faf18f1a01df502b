import t from 'tap'
import { startApiFixture } from './helpers/api-deps.ts'

const { deps, app, headers } = await startApiFixture(t, 'rejections test')

const device = await deps.devices.create({
  name: 'Cuff', mac: '02:00:00:00:cc:01', firmwareVersion: '1', softwareVersion: '1', startedAt: '2025-01-01T00:00:00Z'
}, null)
const quiet = await deps.devices.create({
  name: 'Quiet', mac: '02:00:00:00:cc:02', firmwareVersion: '1', softwareVersion: '1', startedAt: '2025-01-01T00:00:00Z'
}, null)
const topic = `devices/${device.id}/telemetry`
for (let i = 0; i < 5; i++) {
  await deps.rejections.record(device.id, topic, 'value_out_of_range', `heart_rate outside the plausible range (#${i})`,
    Buffer.from(JSON.stringify({ seq: i, readings: [{ metric: 'heart_rate', value: 999, unit: '/min', ts: 1 }] })))
}
const big = Buffer.alloc(10_000, 'x')
await deps.rejections.record(device.id, topic, 'payload_not_json', 'payload is not JSON', big)
await deps.rejections.record(quiet.id, `devices/${quiet.id}/telemetry`, 'payload_schema', 'not for the other device', Buffer.from('{}'))

const url = `/v1/devices/${device.id}/rejections`

t.test('lists a device\'s rejections newest first, paged', async (t) => {
  const first = await app.inject({ method: 'GET', url: `${url}?limit=4`, headers })
  t.equal(first.statusCode, 200)
  const page1 = first.json()
  t.equal(page1.items.length, 4)
  t.match(page1.items[0], {
    id: /^\d+$/,
    topic,
    reason: 'payload_not_json',
    message: 'payload is not JSON',
    payloadBytes: 10_000,
    receivedAt: String
  })
  t.equal(page1.items[0].payload.length, 4096, 'payload kept to its first 4 KiB')
  t.same(Object.keys(page1.items[0]).sort(), ['id', 'message', 'payload', 'payloadBytes', 'reason', 'receivedAt', 'topic'])
  t.match(page1.items[1], { reason: 'value_out_of_range', payload: /"seq":4/ })
  t.type(page1.nextCursor, 'string')

  const second = await app.inject({ method: 'GET', url: `${url}?limit=4&cursor=${page1.nextCursor}`, headers })
  const page2 = second.json()
  t.equal(page2.items.length, 2)
  t.equal(page2.nextCursor, null)
  const ids = [...page1.items, ...page2.items].map((r: { id: string }) => Number(r.id))
  t.same(ids, [...ids].sort((a, b) => b - a), 'newest first')
  t.equal(new Set(ids).size, 6)
  t.ok([...page1.items, ...page2.items].every((r: { topic: string }) => r.topic === topic), 'only this device')
})

t.test('unknown device, bad cursor', async (t) => {
  const unknown = await app.inject({ method: 'GET', url: '/v1/devices/00000000-0000-4000-8000-000000000000/rejections', headers })
  t.equal(unknown.statusCode, 404)
  t.equal(unknown.json().code, 'VIGIL_ERR_UNKNOWN_DEVICE')
  for (const cursor of ['abc', '-1', '99999999999999999999']) {
    const res = await app.inject({ method: 'GET', url: `${url}?cursor=${cursor}`, headers })
    t.equal(res.statusCode, 400, cursor)
    t.equal(res.json().code, 'VIGIL_ERR_BAD_CURSOR', cursor)
  }
})
