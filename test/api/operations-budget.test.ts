import type { AddressInfo } from 'node:net'
import t from 'tap'
import { buildApi } from '../../api/app.ts'
import { OPERATIONS_REQUESTS_PER_MINUTE } from '../../api/plugins/rate-limits.ts'
import { defaults } from '../../config/schema/defaults.ts'
import { startApiFixture } from '../helpers/api-deps.ts'

// Issue 16: a container healthcheck got 429 because /healthz shared the public per-address
// budget with /docs and 404s. Real HTTP on a real socket, with the default limits.
const { deps } = await startApiFixture(t, 'operations budget test')

async function listening (options: Parameters<typeof buildApi>[0]): Promise<string> {
  const app = await buildApi(options)
  t.teardown(() => app.close())
  await app.listen({ host: '127.0.0.1', port: 0 })
  return `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`
}

t.test('after the public budget is spent, /healthz and /metrics still answer', async (t) => {
  const base = await listening(deps)
  const publicBudget = defaults.API_UNAUTHENTICATED_RATE_LIMIT_PER_MINUTE
  let limited = 0
  for (let i = 0; i < publicBudget + 5; i++) {
    const res = await fetch(`${base}/docs/json`)
    await res.arrayBuffer()
    if (res.status === 429) limited++
  }
  t.equal(limited, 5, 'the public budget is spent: the last requests got 429')
  const health = await fetch(`${base}/healthz`)
  t.equal(health.status, 200, '/healthz is not charged to the public budget')
  t.equal((await health.json()).status, 'ok')
  const metrics = await fetch(`${base}/metrics`)
  await metrics.arrayBuffer()
  t.equal(metrics.status, 200, '/metrics is not charged to the public budget')
  const docs = await fetch(`${base}/docs/json`)
  await docs.arrayBuffer()
  t.equal(docs.status, 429, 'and health checks did not refill the public budget')
})

t.test('health and metrics have a budget of their own, per address', async (t) => {
  const base = await listening(deps)
  let last = 0
  for (let i = 0; i <= OPERATIONS_REQUESTS_PER_MINUTE; i++) {
    const res = await fetch(`${base}/metrics`)
    await res.arrayBuffer()
    last = res.status
    if (i < OPERATIONS_REQUESTS_PER_MINUTE && res.status !== 200) {
      t.fail(`request ${i + 1} got ${res.status}`)
      return
    }
  }
  t.equal(last, 429, `request ${OPERATIONS_REQUESTS_PER_MINUTE + 1} to /metrics is refused`)
  const docs = await fetch(`${base}/docs/json`)
  await docs.arrayBuffer()
  t.equal(docs.status, 200, 'the public budget is untouched by health and metrics')
})
