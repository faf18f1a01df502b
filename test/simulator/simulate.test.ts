import { execFile } from 'node:child_process'
import path from 'node:path'
import t from 'tap'
import { adminToken, startTestVigil } from '../helpers/vigil.ts'

const repoRoot = path.resolve(import.meta.dirname, '../..')

// `npm run simulate` against a running embedded Vigil, as a new user runs it: ports from the data
// directory's listening.json, even in a shell where HTTP_PORT=0 and MQTT_PORT=0 started Vigil
// (that said "any free port"; the simulator took "0" for the port and could not connect).
t.test('the simulator provisions, publishes and gets every message acknowledged; HTTP_PORT=0 in its environment is not a port', async (t) => {
  const vigil = await startTestVigil()
  t.teardown(() => vigil.close())
  const { stdout, code } = await new Promise<{ stdout: string, code: number | null }>((resolve) => {
    execFile(process.execPath, ['--import', 'tsx', path.join(repoRoot, 'simulator/simulate.ts'), '--devices', '2', '--rate', '5', '--duration', '2', '--quiet'], {
      cwd: repoRoot,
      env: { ...process.env, VIGIL_DATA_DIR: vigil.dataDir, VIGIL_ADMIN_TOKEN: adminToken, HTTP_PORT: '0', MQTT_PORT: '0' },
      timeout: 60_000
    }, (err, stdout, stderr) => resolve({ stdout: stdout + stderr, code: err === null ? 0 : (err as { code?: number }).code ?? 1 }))
  })
  t.equal(code, 0, stdout)
  const done = /done: (\d+) messages sent, (\d+) acknowledged, 0 failed/.exec(stdout)
  t.ok(done !== null && Number(done[1]) > 0 && done[1] === done[2], `every message acknowledged: ${stdout.trim().split('\n').at(-1)}`)
  const patients = await vigil.api<{ items: Array<{ id: string }> }>('GET', '/v1/patients?limit=10')
  let readings = 0
  for (const p of patients.body.items) readings += (await vigil.api<{ items: unknown[] }>('GET', `/v1/patients/${p.id}/readings?limit=500`)).body.items.length
  t.equal(readings, Number(done?.[2] ?? 0) * 6, 'six readings a message, each readable once acknowledged')
})
