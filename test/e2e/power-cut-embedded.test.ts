import t from 'tap'
import type { Test } from 'tap'
import { createCuttableDisk, cutWithControl, publishThenCut, verifyAcknowledged, type CuttableDisk } from '../helpers/power-cut.ts'
import { provisionDevice } from '../helpers/provision.ts'
import { spawnVigil, type VigilProcess } from '../helpers/vigil-process.ts'

// Issue 12: SIGKILL keeps the page cache, so a missing fsync passes every crash test. Here the
// data directory is a filesystem whose power is cut (test/helpers/power-cut.ts: what was not
// synced is gone, and a control file checks that on every run): what Vigil acknowledged must
// be on it afterwards.
const token = 'power-cut-admin-token-0123456789abcdef'
// A first embedded start runs PGlite's initdb: about 50 s on a loaded 2-core machine.
const FIRST_START_MS = 120_000

/** A cuttable disk, and a way to start Vigil on it (killed, and the disk removed, at the end). */
async function cuttableVigil (t: Test): Promise<{ disk: CuttableDisk, start: () => Promise<VigilProcess> }> {
  const disk = await createCuttableDisk(256)
  t.teardown(() => disk.close())
  const start = async (): Promise<VigilProcess> => {
    const p = await spawnVigil({ VIGIL_ADMIN_TOKEN: token }, disk.dir, { startTimeoutMs: FIRST_START_MS })
    t.teardown(() => { p.child.kill('SIGKILL') })
    return p
  }
  return { disk, start }
}

t.test('embedded PGlite: power cut mid-stream, nothing acknowledged is lost', async (t) => {
  const { disk, start } = await cuttableVigil(t)
  const first = await start()
  const base = `http://127.0.0.1:${first.httpPort}`
  const devices = await Promise.all(Array.from({ length: 10 }, () => provisionDevice(base, token)))
  const fleet = await publishThenCut(t, first, disk, devices)

  const second = await start()
  await verifyAcknowledged(t, second, token, fleet, devices)
  second.child.kill('SIGTERM')
  t.equal(await second.exited, 0)
})

t.test('embedded PGlite: what the API answered 201 for survives a power cut right after the answer', async (t) => {
  const { disk, start } = await cuttableVigil(t)
  const first = await start()
  const base = `http://127.0.0.1:${first.httpPort}`
  const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json' }
  const created = await fetch(`${base}/v1/patients`, { method: 'POST', headers, body: JSON.stringify({ displayName: 'Power Cut' }) })
  t.equal(created.status, 201)
  const { id } = await created.json() as { id: string }
  // No reading flows, so nothing else syncs PGlite's data directory: only the write's own answer.
  first.child.kill('SIGKILL')
  await first.exited
  await cutWithControl(t, disk)

  const second = await start()
  const read = await fetch(`http://127.0.0.1:${second.httpPort}/v1/patients/${id}`, { headers })
  t.equal(read.status, 200, 'the patient created before the cut is there')
  second.child.kill('SIGTERM')
  t.equal(await second.exited, 0)
})
