import { randomBytes } from 'node:crypto'
import fs from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import mqtt from 'mqtt'
import pg from 'pg'
import t from 'tap'
import { clusterAdminToken, startCluster, type ClusterMember } from '../helpers/cluster.ts'
import { provisionDevice } from '../helpers/provision.ts'
import { waitFor, waitForValue, within } from '../helpers/wait.ts'

// Issue 16: several Vigil processes started AT THE SAME TIME on a fresh, empty Postgres database
// (the first deployment of a scaled-out site, or every replica of an orchestrator starting at
// once). Each of them migrates, creates the bootstrap admin token, records the alert rules and
// competes for leadership on the same empty tables: all must come up and agree. Several rounds,
// each on a new empty database, since a race may not show every time.

t.setTimeout(900_000)
const ROUNDS = 3
const SIZE = 3
const migrations = (await fs.readdir(path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'store', 'migrations')))
  .filter((f) => f.endsWith('.sql')).length

/** The samples of one labelled metric family (`task="escalation"` → 1). */
async function samples (member: ClusterMember, name: string): Promise<Map<string, number>> {
  const text = await (await fetch(`${member.base}/metrics`)).text()
  const out = new Map<string, number>()
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+)\{([^}]*)\} (\S+)$/.exec(line)
    if (m !== null && m[1] === name) out.set(m[2]!, Number(m[3]))
  }
  return out
}

for (let round = 1; round <= ROUNDS; round++) {
  t.test(`round ${round}: ${SIZE} processes started together on an empty database all come up and agree`, async (t) => {
    // One key set for all (production supplies one): a record written by one process is read by another.
    const cluster = await startCluster(SIZE, {
      emptyDatabase: true,
      together: true,
      startTimeoutMs: 180_000,
      env: { VIGIL_SECRET_KEY: randomBytes(32).toString('base64') }
    })
    t.teardown(() => cluster.teardown())
    const members = cluster.members
    t.equal(members.length, SIZE, 'every process started')
    const sql = new pg.Pool({ connectionString: cluster.databaseUrl, max: 1 })
    t.teardown(() => sql.end())

    for (const [i, m] of members.entries()) {
      const health = await fetch(`${m.base}/healthz`)
      t.equal(health.status, 200, `process ${i + 1} healthy`)
      t.equal((await m.api('GET', '/v1/patients')).status, 200, `the bootstrap admin token works on process ${i + 1}`)
    }
    t.equal((await sql.query('SELECT count(*)::int AS n FROM schema_migrations')).rows[0].n, migrations, 'every migration applied once')
    t.equal((await sql.query('SELECT count(*)::int AS n FROM api_tokens WHERE revoked_at IS NULL')).rows[0].n, 1, 'one bootstrap admin token')
    const versions = (await sql.query('SELECT version FROM alert_rule_versions')).rows
    t.equal(versions.length, 1, 'the rules file recorded as one version, not once per process')

    // Each leader task held by exactly one process.
    await waitFor('every cluster task led by exactly one process', async () => {
      const held = new Map<string, number>()
      for (const m of members) for (const [task, v] of await samples(m, 'vigil_cluster_leader')) held.set(task, (held.get(task) ?? 0) + v)
      return held.size > 0 && [...held.values()].every((n) => n === 1)
    }, 60_000)

    // A device provisioned through one process connects to the next and its reading is read
    // through the third; the patient's record (encrypted) reads the same everywhere.
    for (let i = 0; i < SIZE; i++) {
      const [via, connectTo, readFrom] = [members[i]!, members[(i + 1) % SIZE]!, members[(i + 2) % SIZE]!]
      const device = await provisionDevice(via.base, clusterAdminToken)
      const client = await mqtt.connectAsync(`mqtt://127.0.0.1:${connectTo.mqttPort}`, {
        clientId: device.deviceId, username: device.deviceId, password: device.password, reconnectPeriod: 0, protocolVersion: 4
      })
      t.teardown(() => client.endAsync(true))
      t.pass(`a device provisioned on process ${i + 1} authenticates on process ${(i + 1) % SIZE + 1}`)
      await within('PUBACK', client.publishAsync(`devices/${device.deviceId}/telemetry`,
        JSON.stringify({ seq: 1, readings: [{ metric: 'heart_rate', value: 72, unit: '/min', ts: Date.now() - 1000 }] }), { qos: 1 }), 15_000)
      const readings = await waitForValue('the reading, through another process', async () =>
        (await readFrom.api('GET', `/v1/patients/${device.patientId}/readings`)).body.items as Array<{ value: number }>,
      (items) => items.length === 1)
      t.equal(readings[0]!.value, 72)
      const patient = await readFrom.api('GET', `/v1/patients/${device.patientId}`)
      t.equal(patient.body.displayName, 'Test Patient', 'the patient reads the same on another process')
      await client.endAsync(true)
    }
  })
}
