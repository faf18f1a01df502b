import net from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import t from 'tap'
import { startAlertingFixture } from '../../helpers/alerting.ts'
import { waitFor } from '../../helpers/wait.ts'

// A client that leaves while GET /v1/alerts/stream is still looking up its visible patients:
// the stream is set up after the connection has closed, and its heartbeat (here every 20 ms)
// must not run on for ever. It did: the heartbeat refreshed the visible patients of a stream no
// one read, every interval, and kept the process from exiting after the server closed (a web
// app test hung in CI once the patient page opened a stream of its own).
const f = await startAlertingFixture({ network: true, streamHeartbeatMs: 20 })
t.teardown(() => f.close())
const policy = f.access.policy
const visiblePatients = policy.visiblePatients.bind(policy)
let calls = 0
let gate: Promise<void> | null = null
policy.visiblePatients = async (principal) => {
  calls++
  if (gate !== null) await gate
  return await visiblePatients(principal)
}

t.test('a stream whose client left during set-up stops', async (t) => {
  let release!: () => void
  gate = new Promise((resolve) => { release = resolve })
  const url = new URL(f.baseUrl!)
  const socket = net.connect(Number(url.port), url.hostname)
  await new Promise((resolve) => socket.once('connect', resolve))
  socket.write(`GET /v1/alerts/stream HTTP/1.1\r\nHost: ${url.host}\r\nAuthorization: ${f.adminHeaders.authorization}\r\n\r\n`)
  await waitFor('the route to ask for the visible patients', () => calls === 1)
  socket.destroy()
  // The server sees the connection close, then the route goes on and sets the stream up.
  await sleep(100)
  gate = null
  release()
  await sleep(100)
  const after = calls
  await sleep(300)
  t.equal(calls, after, `no heartbeat refreshed the stream afterwards (${calls - after} refreshes in 300 ms)`)
})
