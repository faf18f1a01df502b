import { execFile } from 'node:child_process'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import t from 'tap'
import { startInfluxd } from '../helpers/influxd.ts'
import { startTestVigil, telemetry } from '../helpers/vigil.ts'
import { waitFor } from '../helpers/wait.ts'

// Issue 11 item 7: PHI under VIGIL_DATA_DIR (PGlite's catalogs and WAL, the spool) must not be
// readable or writable by another local user. Checked as user nobody (uid 65534), for real.
const NOBODY = 65534
const canRun = process.getuid?.() === 0

/** Whether user nobody can read (or write) `file`: runs `test` as that user. */
async function nobodyCan (op: '-r' | '-w', file: string): Promise<boolean> {
  return await new Promise((resolve) => {
    execFile('test', [op, file], { uid: NOBODY, gid: NOBODY }, (err) => resolve(err === null))
  })
}

async function looseModes (root: string): Promise<string[]> {
  const loose: string[] = []
  const visit = async (file: string): Promise<void> => {
    const stat = await fs.lstat(file).catch(() => null)
    if (stat === null || stat.isSymbolicLink()) return
    if ((stat.mode & 0o077) !== 0) loose.push(`${(stat.mode & 0o777).toString(8)} ${path.relative(root, file) || '.'}`)
    if (stat.isDirectory()) for (const name of await fs.readdir(file).catch(() => [])) await visit(path.join(file, name))
  }
  await visit(root)
  return loose
}

t.test('VIGIL_DATA_DIR and everything in it are private to Vigil\'s user, also files written later', { skip: canRun ? false : 'needs root to run a child as nobody' }, async (t) => {
  const influxd = await startInfluxd()
  t.teardown(() => influxd.close())
  // A data directory as `mkdir` and an older Vigil left it: traversable by everyone, one file 0666.
  const parent = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-perm-'))
  t.teardown(() => fs.rm(parent, { recursive: true, force: true }))
  await fs.chmod(parent, 0o755)
  const dataDir = path.join(parent, 'data')
  await fs.mkdir(dataDir)
  await fs.chmod(dataDir, 0o755)
  const leftOver = path.join(dataDir, 'left-over.json')
  await fs.writeFile(leftOver, '{}')
  await fs.chmod(leftOver, 0o666)
  t.ok(await nobodyCan('-r', leftOver), 'the check itself works: nobody reads a 0666 file in a 0755 directory')

  const vigil = await startTestVigil({ INFLUX_URL: influxd.url, INFLUX_BUCKET: 'vigil_perm' }, dataDir)
  let closed = false
  t.teardown(async () => { if (!closed) await vigil.close() })
  // PHI written after start: a reading through the spool, a patient (new catalog rows and WAL).
  const { patientId, deviceId, password } = await vigil.provision()
  const client = await vigil.connect(deviceId, password)
  await client.publishAsync(`devices/${deviceId}/telemetry`, telemetry(1, [{ metric: 'heart_rate', value: 71, unit: '/min', ts: Date.now() - 1000 }]), { qos: 1 })
  await client.endAsync()
  await waitFor('the reading in InfluxDB', async () => {
    const r = await vigil.api('GET', `/v1/patients/${patientId}/readings`)
    return r.body.items.length === 1 ? true : undefined
  })
  t.equal((await vigil.api('PUT', `/v1/patients/${patientId}/record`, { medications: [{ name: 'canary-medication' }] })).status < 500, true)

  const wal = (await fs.readdir(path.join(dataDir, 'pglite', 'pg_wal'))).filter((f) => /^[0-9A-F]{24}$/.test(f))
  const spool = await fs.readdir(path.join(dataDir, 'spool'))
  t.ok(wal.length > 0 && spool.length > 0, 'there is a WAL segment and a spool file to try')
  const targets = [
    path.join(dataDir, 'pglite', 'global', 'pg_control'),
    ...wal.map((f) => path.join(dataDir, 'pglite', 'pg_wal', f)),
    ...spool.map((f) => path.join(dataDir, 'spool', f)),
    leftOver
  ]
  const check = async (when: string): Promise<void> => {
    t.same(await looseModes(dataDir), [], `${when}: no group or other permission bit under VIGIL_DATA_DIR`)
    for (const file of targets) {
      const name = path.relative(dataDir, file)
      t.notOk(await nobodyCan('-r', file), `${when}: nobody cannot read ${name}`)
      t.notOk(await nobodyCan('-w', file), `${when}: nobody cannot write ${name}`)
    }
  }
  await check('running')
  await vigil.close()
  closed = true
  await check('stopped')
  t.equal((await fs.stat(dataDir)).mode & 0o777, 0o700)
})
