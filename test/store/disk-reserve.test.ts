import { execFileSync } from 'node:child_process'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import pg from 'pg'
import t from 'tap'
import type { Test } from 'tap'
import { createTestDatabase, serverUrl } from '../helpers/postgres.ts'
import { startTestVigil, telemetry, type TestVigil } from '../helpers/vigil.ts'
import { waitForValue } from '../helpers/wait.ts'

// Issue 12 item 3: PGlite spins in XLogFlush (event loop blocked, SIGTERM ignored) when it
// cannot create a 16 MB WAL segment, so Vigil must stop writing before the disk is full: a
// real small tmpfs holds the data directory (embedded default), a ballast file eats the free
// space down into the reserve, and publishes and API writes must be refused until it goes.
const MB = 1024 * 1024
const RESERVE_MB = 48

async function mountTmpfs (t: Test, sizeMb: number): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-disk-'))
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${sizeMb}m`, 'tmpfs', dir])
  t.teardown(async () => {
    execFileSync('umount', ['-l', dir])
    await fs.rm(dir, { recursive: true, force: true })
  })
  return dir
}

async function freeBytes (dir: string): Promise<number> {
  const s = await fs.statfs(dir)
  return s.bavail * s.bsize
}

/** Writes a file of `bytes` zeros (tmpfs allocates them). */
async function writeBallast (file: string, bytes: number): Promise<void> {
  const handle = await fs.open(file, 'w')
  try {
    const chunk = Buffer.alloc(MB)
    for (let left = bytes; left > 0; left -= chunk.length) await handle.write(chunk, 0, Math.min(chunk.length, left))
  } finally {
    await handle.close()
  }
}

async function health (vigil: TestVigil): Promise<{ status: number, checks: Record<string, string> }> {
  const res = await fetch(`http://127.0.0.1:${vigil.httpPort}/healthz`)
  return { status: res.status, checks: ((await res.json()) as { checks: Record<string, string> }).checks }
}

async function waitForDisk (vigil: TestVigil, want: 'ok' | 'failed'): Promise<void> {
  // /healthz is charged to the address budget (120 a minute): poll gently.
  await waitForValue(`/healthz disk to become ${want}`, async () => await health(vigil), (h) => h.checks?.disk === want, { timeoutMs: 15_000, everyMs: 300 })
}

async function publish (vigil: TestVigil, device: { deviceId: string, password: string }, seq: number): Promise<'acked' | 'closed'> {
  const client = await vigil.connect(device.deviceId, device.password)
  try {
    const closed = new Promise<'closed'>((resolve) => client.once('close', () => resolve('closed')))
    return await Promise.race([
      client.publishAsync(`devices/${device.deviceId}/telemetry`, telemetry(seq, [{ metric: 'heart_rate', value: 70, unit: '/min' }]), { qos: 1 })
        .then(() => 'acked' as const, () => 'closed' as const),
      closed
    ])
  } finally {
    client.end(true)
  }
}

async function metric (vigil: TestVigil, name: string): Promise<number | null> {
  const text = await fetch(`http://127.0.0.1:${vigil.httpPort}/metrics`).then((r) => r.text())
  const line = text.split('\n').find((l) => l.startsWith(`${name} `))
  return line === undefined ? null : Number(line.split(' ')[1])
}

t.test('embedded default: a data directory down to its reserve refuses writes, and recovers when space returns', async (t) => {
  const dataDir = await mountTmpfs(t, 200)
  const vigil = await startTestVigil({ VIGIL_DISK_RESERVE_MB: String(RESERVE_MB) }, dataDir)
  t.teardown(() => vigil.close())
  const device = await vigil.provision()
  t.equal(await publish(vigil, device, 1), 'acked', 'a publish is acknowledged while there is room')
  t.equal((await health(vigil)).checks.disk, 'ok')

  // Leave half the reserve free: below the reserve, far from ENOSPC.
  const ballast = path.join(dataDir, 'ballast')
  await writeBallast(ballast, await freeBytes(dataDir) - (RESERVE_MB / 2) * MB)
  t.comment(`free after ballast: ${((await freeBytes(dataDir)) / MB).toFixed(1)} MB`)
  await waitForDisk(vigil, 'failed')
  const h = await health(vigil)
  t.equal(h.status, 503, '/healthz is 503 while the disk is low')

  t.equal(await publish(vigil, device, 2), 'closed', 'a publish is refused without PUBACK')
  t.ok(await vigil.refusedCount('disk_low') >= 1, 'counted as vigil_mqtt_refused_total{reason="disk_low"}')
  t.equal(await metric(vigil, 'vigil_disk_low'), 1, 'vigil_disk_low is 1')
  t.ok((await metric(vigil, 'vigil_disk_free_bytes'))! < RESERVE_MB * MB, 'vigil_disk_free_bytes is exported')

  const write = await vigil.api<{ code: string }>('POST', '/v1/patients', { displayName: 'Disk Low' })
  t.equal(write.status, 503, 'an API write is refused')
  t.equal(write.body.code, 'VIGIL_ERR_DISK_LOW')
  const raw = await fetch(`http://127.0.0.1:${vigil.httpPort}/v1/patients`, {
    method: 'POST', headers: { authorization: 'Bearer test-admin-token-0123456789abcdef', 'content-type': 'application/json' }, body: JSON.stringify({ displayName: 'x' })
  })
  t.ok(Number(raw.headers.get('retry-after')) > 0, 'with Retry-After')
  t.equal((await vigil.api('GET', '/v1/patients?limit=1')).status, 200, 'reads still work')

  await fs.rm(ballast)
  await waitForDisk(vigil, 'ok')
  t.equal((await health(vigil)).status, 200)
  t.equal(await metric(vigil, 'vigil_disk_low'), 0)
  t.equal(await publish(vigil, device, 3), 'acked', 'publishes are acknowledged again')
  t.equal((await vigil.api('POST', '/v1/patients', { displayName: 'After' })).status, 201, 'API writes work again')
  const stored = await vigil.api<{ items: Array<{ seq: number | null }> }>('GET', `/v1/patients/${device.patientId}/readings?metric=heart_rate&limit=10`)
  t.equal(stored.status, 200)
  t.same(stored.body.items.map((r) => r.seq).sort(), [1, 3], 'the refused message was not stored; the others were')
})

// When the database itself reports a full disk (here a real Postgres whose `patients` table
// lives in a tablespace on a full 4 MB tmpfs), an API write answers 503 with Retry-After
// (the issue saw 500 VIGIL_ERR_INTERNAL during PGlite's ENOSPC).
t.test('the database reporting a full disk is a 503 VIGIL_ERR_DISK_LOW with Retry-After, not a 500', async (t) => {
  const spaceDir = await mountTmpfs(t, 4)
  execFileSync('chown', ['postgres:postgres', spaceDir])
  const database = await createTestDatabase()
  const tablespace = `vigil_full_${path.basename(spaceDir).replace(/[^a-z0-9]/gi, '').toLowerCase()}`
  const admin = new pg.Client({ connectionString: database.url })
  await admin.connect()
  t.teardown(async () => {
    await admin.end()
    await database.drop()
    const server = new pg.Client({ connectionString: serverUrl })
    await server.connect()
    await server.query(`DROP TABLESPACE IF EXISTS ${tablespace}`).finally(() => server.end())
  })
  await admin.query(`CREATE TABLESPACE ${tablespace} LOCATION '${spaceDir}'`)
  const vigil = await startTestVigil({ DATABASE_URL: database.url, VIGIL_DISK_RESERVE_MB: '0' })
  t.teardown(() => vigil.close())
  await admin.query(`ALTER TABLE patients SET TABLESPACE ${tablespace}`)
  // Fill the tablespace's filesystem to the last byte (tmpfs allocates pages: ENOSPC at the end).
  const ballast = await fs.open(path.join(spaceDir, 'ballast'), 'w')
  const page = Buffer.alloc(4096)
  for (;;) {
    try { await ballast.write(page) } catch { break }
  }
  await ballast.close()

  let answer: { status: number, body: { code: string } } | null = null
  for (let i = 0; i < 500 && answer === null; i++) {
    const res = await vigil.api<{ code: string }>('POST', '/v1/patients', { displayName: `Patient ${i}` })
    if (res.status !== 201) answer = res
  }
  t.ok(answer !== null, 'the table could not grow on the full filesystem')
  t.equal(answer?.status, 503, 'answered 503')
  t.equal(answer?.body.code, 'VIGIL_ERR_DISK_LOW')
  const raw = await fetch(`http://127.0.0.1:${vigil.httpPort}/v1/patients`, {
    method: 'POST', headers: { authorization: 'Bearer test-admin-token-0123456789abcdef', 'content-type': 'application/json' }, body: JSON.stringify({ displayName: 'x' })
  })
  t.equal(raw.status, 503)
  t.ok(Number(raw.headers.get('retry-after')) > 0, 'with Retry-After')
})
