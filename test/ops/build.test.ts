import { execFile } from 'node:child_process'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import mqtt from 'mqtt'
import t from 'tap'
import { serviceRooms } from '../../scripts/service-rooms.mjs'
import { seedEmbeddedDatabase } from '../helpers/pglite-template.ts'
import { provisionDevice } from '../helpers/provision.ts'
import { spawnVigil } from '../helpers/vigil-process.ts'
import { waitFor } from '../helpers/wait.ts'

// `npm start` and the image run the service compiled by scripts/build.mjs, with plain node: no
// TypeScript loader in the process or its worker threads. This builds it (inside the repository,
// so packages and "type": "module" resolve as for dist/), starts it, and takes a reading through
// MQTT, the alert thread and the API.
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')
const adminToken = 'build-test-admin-token-0123456789abcdef'

t.test('the compiled service starts with plain node and takes a reading end to end', async (t) => {
  await fs.mkdir(path.join(root, '.tap'), { recursive: true })
  const outdir = await fs.mkdtemp(path.join(root, '.tap', 'dist-test-'))
  t.teardown(() => fs.rm(outdir, { recursive: true, force: true }))
  await promisify(execFile)(process.execPath, [path.join(root, 'scripts/build.mjs'), '--outdir', outdir, '--quiet'], { cwd: root })

  // Every relative import of the output names a compiled file that is there (a .ts one would need a loader).
  const compiled = (await fs.readdir(outdir, { recursive: true })).filter((f) => f.endsWith('.js'))
  t.ok(compiled.length > 100, `${compiled.length} files compiled`)
  const missing: string[] = []
  for (const file of compiled) {
    const text = await fs.readFile(path.join(outdir, file), 'utf8')
    for (const m of text.matchAll(/(?:from|import)\s*\(?\s*["'](\.{1,2}\/[^"']+)["']/g)) {
      // The web app's own sources import their stylesheet; esbuild bundles them for the browser.
      if (file.startsWith('web/src/') && m[1]!.endsWith('.css')) continue
      const target = path.resolve(path.dirname(path.join(outdir, file)), m[1]!)
      if (!target.endsWith('.js') || !(await fs.stat(target).then(() => true, () => false))) missing.push(`${file} → ${m[1]!}`)
    }
  }
  t.strictSame(missing, [], 'no relative import left to a .ts file or to a file not built')
  for (const task of ['alerts/engine/evaluate-task.js', 'jobs/transcription/transcribe-task.js']) {
    t.ok(await fs.stat(path.join(outdir, task)).then(() => true, () => false), `worker task ${task} is built`)
  }
  // Only the layout's rooms (scripts/layout-floors.json, up to the API's floor) and the top-level
  // sources: never tests, benches, docs or a data directory someone left in the checkout.
  const rooms = new Set(await serviceRooms(root))
  t.ok(['alerts', 'api', 'readings', 'store'].every((r) => rooms.has(r)) && !rooms.has('test') && !rooms.has('bench'), 'the rooms are the service\'s')
  const top = await fs.readdir(outdir, { withFileTypes: true })
  t.strictSame(top.filter((e) => e.isDirectory() && !rooms.has(e.name)).map((e) => e.name), [], 'no folder but the rooms')
  t.ok(top.filter((e) => e.isFile()).every((e) => /\.js(\.map)?$/.test(e.name)), 'no top-level file but compiled sources')
  for (const asset of ['config/alert-rules.yaml', 'store/migrations', 'web/src/main.tsx']) {
    t.ok(await fs.stat(path.join(outdir, asset)).then(() => true, () => false), `${asset} is beside the compiled code`)
  }

  const dataDir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-build-'))
  t.teardown(() => fs.rm(dataDir, { recursive: true, force: true }))
  await seedEmbeddedDatabase(dataDir)
  const vigil = await spawnVigil({ VIGIL_ADMIN_TOKEN: adminToken }, dataDir, { entry: path.join(outdir, 'main.js') })
  t.teardown(async () => { vigil.child.kill('SIGTERM'); await vigil.exited })
  const cmdline = (await fs.readFile(`/proc/${vigil.child.pid!}/cmdline`, 'utf8')).split('\0')
  t.notOk(cmdline.some((a) => a.includes('tsx')), `no tsx in the process (${cmdline.filter((a) => a !== '').join(' ')})`)

  const base = `http://127.0.0.1:${vigil.httpPort}`
  const { patientId, deviceId, password } = await provisionDevice(base, adminToken)
  const client = await mqtt.connectAsync(`mqtt://127.0.0.1:${vigil.mqttPort}`, { clientId: deviceId, username: deviceId, password, reconnectPeriod: 0 })
  t.teardown(() => client.endAsync())
  await client.publishAsync(`devices/${deviceId}/telemetry`, JSON.stringify({ seq: 1, readings: [{ metric: 'heart_rate', value: 71, unit: '/min', ts: Date.now() }] }), { qos: 1 })

  const evaluated = async (): Promise<number> => {
    const text = await fetch(`${base}/metrics`, { headers: { authorization: `Bearer ${adminToken}` } }).then((r) => r.text())
    return Number(/^vigil_alert_readings_evaluated_total (\S+)/m.exec(text)?.[1] ?? 0)
  }
  await waitFor('the reading evaluated by the alert thread', async () => await evaluated() >= 1).catch(() => {})
  t.equal(await evaluated(), 1, 'the alert engine\'s worker thread (compiled task) evaluated the reading')
  t.notMatch(vigil.output(), /"level":(50|60)/, 'no error logged')
  const latest = await fetch(`${base}/v1/patients/${patientId}/readings/latest`, { headers: { authorization: `Bearer ${adminToken}` } })
  t.equal(latest.status, 200)
  t.match(await latest.json(), { items: [{ metric: 'heart_rate', value: 71, deviceId }] }, 'the reading is stored and served')
  const page = await fetch(`${base}/`)
  t.equal(page.status, 200, 'the web app is served (bundled at run time from the copied sources)')
})
