import t from 'tap'
import { dueEscalations, startEscalation } from '../../../alerts/lifecycle/escalation.ts'
import type { EscalationPolicy } from '../../../alerts/contract.ts'
import { change, startAlertingFixture } from '../../helpers/alerting.ts'

const MIN = 60_000
const policy: EscalationPolicy = {
  id: 'ward',
  tiers: [
    { notify: ['nurse'], afterMs: 5 * MIN },
    { notify: ['doctor'], afterMs: 10 * MIN },
    { notify: ['rapid_response', 'pager'], afterMs: 15 * MIN }
  ]
}

t.test('dueEscalations (pure): next tier, last tier repeats, schedule kept, unknown policy skipped', async (t) => {
  const policies = new Map([['ward', policy]])
  const row = (tier: number, nextAt: number, escalationPolicy = 'ward') => ({ id: `a${tier}`, escalationPolicy, escalationTier: tier, nextEscalationAt: nextAt })
  const now = 1_000_000_000
  const cases: Array<[string, ReturnType<typeof row>, { tier: number, nextAt: number, notify: string[] } | null]> = [
    ['not due yet', row(0, now + 1), null],
    ['tier 0 → 1, deadline from the one that passed', row(0, now - 1000), { tier: 1, nextAt: now - 1000 + 10 * MIN, notify: ['doctor'] }],
    ['tier 1 → 2', row(1, now), { tier: 2, nextAt: now + 15 * MIN, notify: ['rapid_response', 'pager'] }],
    ['last tier repeats', row(2, now), { tier: 2, nextAt: now + 15 * MIN, notify: ['rapid_response', 'pager'] }],
    ['after long downtime: from now, not a burst', row(0, now - 60 * MIN), { tier: 1, nextAt: now + 10 * MIN, notify: ['doctor'] }],
    ['policy removed by a reload', row(0, now - 1, 'gone'), null]
  ]
  for (const [name, input, expected] of cases) {
    const [step] = dueEscalations([input], policies, now)
    if (expected === null) t.equal(step, undefined, name)
    else t.match(step, { ...expected, fromTier: input.escalationTier, fromNextAt: input.nextEscalationAt }, name)
  }
})

t.test('an unacknowledged alert escalates on schedule through the tiers, repeats, and stops when acknowledged', async (t) => {
  const f = await startAlertingFixture({ manualClock: true })
  t.teardown(() => f.close())
  f.policies.set('ward', policy)
  const clock = f.clock!
  const escalation = f.alerting.escalation
  const patientId = await f.createPatient()
  const get = async (id: string) => (await f.app.inject({ method: 'GET', url: `/v1/alerts/${id}`, headers: f.adminHeaders })).json()

  await f.alerting.sink.apply([change(patientId, { escalationPolicy: 'ward', at: clock.now() })])
  const [opened] = (await f.app.inject({ method: 'GET', url: `/v1/alerts?patientId=${patientId}`, headers: f.adminHeaders })).json().items
  const start = clock.now()
  t.match(opened, { escalationTier: 0, nextEscalationAt: new Date(start + 5 * MIN).toISOString() })

  // Ticks every 15 s, as cron runs them.
  const runUntil = async (ms: number) => {
    let escalated = 0
    while (clock.now() < start + ms) {
      clock.advance(15_000)
      escalated += await escalation.tick()
    }
    return escalated
  }
  t.equal(await runUntil(5 * MIN - 15_000), 0, 'nothing before the nurse tier runs out')
  t.equal(await runUntil(5 * MIN), 1, 'doctor at 5 min')
  t.match(await get(opened.id), { escalationTier: 1, nextEscalationAt: new Date(start + 15 * MIN).toISOString() })
  t.equal(await runUntil(15 * MIN - 15_000), 0)
  t.equal(await runUntil(15 * MIN), 1, 'rapid response at 15 min')
  t.equal(await runUntil(30 * MIN), 1, 'the last tier repeats at 30 min')
  t.equal(await runUntil(45 * MIN), 1, 'and at 45 min')
  t.match(await get(opened.id), { escalationTier: 2, status: 'open' })

  const ack = await f.app.inject({ method: 'POST', url: `/v1/alerts/${opened.id}/acknowledge`, headers: f.adminHeaders })
  t.equal(ack.statusCode, 200)
  t.equal(await runUntil(120 * MIN), 0, 'no escalation after the acknowledgement')

  const events = (await f.app.inject({ method: 'GET', url: `/v1/alerts/${opened.id}/events`, headers: f.adminHeaders })).json().items
  t.same(events.map((e: any) => [e.type, e.body.tier ?? null, e.body.notify ?? null]), [
    ['opened', 0, ['nurse']],
    ['escalated', 1, ['doctor']],
    ['escalated', 2, ['rapid_response', 'pager']],
    ['escalated', 2, ['rapid_response', 'pager']],
    ['escalated', 2, ['rapid_response', 'pager']],
    ['acknowledged', null, null]
  ])
})

t.test('an auto-resolved alert stops escalating; alerts without a policy never escalate; concurrent ticks escalate once', async (t) => {
  const f = await startAlertingFixture({ manualClock: true })
  t.teardown(() => f.close())
  f.policies.set('ward', policy)
  const clock = f.clock!
  const p1 = await f.createPatient()
  const p2 = await f.createPatient()
  const p3 = await f.createPatient()
  await f.alerting.sink.apply([
    change(p1, { escalationPolicy: 'ward', at: clock.now() }),
    change(p2, { escalationPolicy: null, at: clock.now() }),
    change(p3, { escalationPolicy: 'ward', at: clock.now() })
  ])
  await f.alerting.sink.apply([change(p1, { status: 'cleared', at: clock.now() + 1 })])
  clock.advance(6 * MIN)
  // A second escalation service on the same database (another instance) ticking at once.
  const other = startEscalation({ store: f.alerting.store, policies: () => f.policies, now: clock.now, log: f.deps.log })
  const [a, b] = await Promise.all([f.alerting.escalation.tick(), other.tick()])
  t.equal(a + b, 1, 'only p3 escalates, once')
  await other.close()
})

t.test('the cron schedule only calls tick', async (t) => {
  const f = await startAlertingFixture({ manualClock: true })
  t.teardown(() => f.close())
  const scheduled: Array<{ expression: string, run: () => Promise<void>, stopped: boolean }> = []
  const escalation = startEscalation({
    store: f.alerting.store,
    policies: () => f.policies,
    now: f.clock!.now,
    log: f.deps.log,
    schedule: (expression, run) => {
      const job = { expression, run, stopped: false }
      scheduled.push(job)
      return { stop () { job.stopped = true } }
    }
  })
  t.equal(scheduled.length, 1)
  t.equal(scheduled[0]!.expression, '*/15 * * * * *', 'every 15 s (seconds field)')
  await scheduled[0]!.run()
  await escalation.close()
  t.equal(scheduled[0]!.stopped, true, 'close stops the job')
})
