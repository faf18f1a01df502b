import { spawn } from 'node:child_process'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { seedEmbeddedDatabase } from '../helpers/pglite-template.ts'

// The real entry point as an operator runs it: config errors, start-up, signals.
const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..')

function run (env: Record<string, string>) {
  const child = spawn(process.execPath, ['--import', 'tsx', 'main.ts'], {
    // Load shedding off: /healthz answers 503 while the loop lags, and a busy machine must not fail this.
    cwd: root, env: { ...process.env, LOG_LEVEL: 'info', API_MAX_EVENT_LOOP_DELAY_MS: '0', ...env }, stdio: ['ignore', 'pipe', 'pipe']
  })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString() })
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))
  return { child, exited, output: () => ({ stdout, stderr }) }
}

t.test('a bad variable stops start-up with a message naming it', async (t) => {
  const p = run({ HTTP_PORT: 'eighty' })
  t.equal(await p.exited, 78)
  t.match(p.output().stderr, /HTTP_PORT must be an integer between 0 and 65535/)
})

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  t.test(`${signal} stops the service cleanly within 10 s`, async (t) => {
    const dataDir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-proc-'))
    t.teardown(() => fs.rm(dataDir, { recursive: true, force: true }))
    // SIGTERM's run starts on an empty data directory, as `npm start` on a fresh clone does
    // (initdb in a child process, migrations); SIGINT's on a copy of a migrated one.
    if (signal === 'SIGINT') await seedEmbeddedDatabase(dataDir)
    const p = run({ HTTP_PORT: '0', MQTT_PORT: '0', VIGIL_DATA_DIR: dataDir })
    t.teardown(() => { p.child.kill('SIGKILL') })
    let exitedEarly = false
    void p.exited.then(() => { exitedEarly = true })
    // Until it listens or exits: a fresh start took 33 s on a loaded 2-core machine, and a start
    // that never comes fails on tap's timeout rather than on a guessed deadline.
    let listening: { httpPort: number, mqttPort: number } | undefined
    while (listening === undefined && !exitedEarly) {
      listening = await fs.readFile(path.join(dataDir, 'listening.json'), 'utf8').then(JSON.parse, () => undefined)
      if (listening === undefined) await new Promise((resolve) => setTimeout(resolve, 200))
    }
    t.ok(listening, `started and wrote its ports${exitedEarly ? ` (it exited: ${p.output().stderr.slice(-2000)})` : ''}`)
    const health = await fetch(`http://127.0.0.1:${listening!.httpPort}/healthz`)
    t.equal(health.status, 200)

    const started = Date.now()
    p.child.kill(signal)
    t.equal(await p.exited, 0, 'exit code 0')
    t.ok(Date.now() - started < 10_000, `stopped in ${Date.now() - started} ms`)
    t.match(p.output().stdout, /"msg":"stopped"/)
    await t.rejects(fs.access(path.join(dataDir, 'vigil.pid')), 'data directory lock released')
  })
}
