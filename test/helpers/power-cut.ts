import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import type { Test } from 'tap'
import { startFleet, type Fleet, type FleetDevice } from './fleet.ts'
import type { VigilProcess } from './vigil-process.ts'

/**
 * A filesystem that can lose power: ext4 on a loop device whose backing file is an image in
 * the machine's temporary directory. `cut()` keeps exactly what the filesystem had sent to
 * its block device and nothing else:
 *
 * - Dirty pages in the page cache (written, not fsync'd, not yet written back) and journal
 *   transactions not yet committed never reached the loop device, so they are not in the
 *   backing file: they are lost, as in a power cut. (SIGKILL alone keeps them: the kernel
 *   writes them back later, which is why crash tests cannot see a missing fsync.)
 * - The image is copied while the filesystem is still mounted, then compared with the
 *   backing file once more: equal means no write reached the device during the copy, so the
 *   copy is one instant's state (a torn copy is retried). The copy is mounted in its place.
 * - Mounted with `commit=600`: ext4's default 5 s journal commit would also write back, in
 *   data=ordered mode, the data of files that grew, hiding a missing fsync. The kernel's own
 *   writeback of pages dirty longer than vm.dirty_expire_centisecs (30 s) still runs, so a
 *   test must cut within 30 s of the writes it means to test.
 * - What it keeps that real hardware may lose: writes the device received but had not yet
 *   flushed from a volatile cache. It models a disk whose cache is safe (or write-through).
 *
 * Needs root (losetup, mount); CI runs as root.
 */
export interface CuttableDisk {
  /** Where the filesystem is mounted (the same path after a cut). */
  readonly dir: string
  /** Power cut: what only the page cache held is gone; the last device state is mounted at `dir`. */
  cut (): Promise<{ attempts: number }>
  close (): Promise<void>
}

function run (cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim()
}

async function digest (file: string): Promise<string> {
  const hash = createHash('sha256')
  for await (const chunk of createReadStream(file, { highWaterMark: 1 << 20 })) hash.update(chunk as Buffer)
  return hash.digest('hex')
}

export async function createCuttableDisk (sizeMb: number): Promise<CuttableDisk> {
  const work = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-powercut-'))
  const dir = path.join(work, 'mnt')
  await fs.mkdir(dir)
  let image = path.join(work, 'disk-0.img')
  await fs.writeFile(image, '')
  await fs.truncate(image, sizeMb * 1024 * 1024)
  let loop: string | null = run('losetup', ['--find', '--show', image])
  let mounted = false
  const mount = (): void => {
    run('mount', ['-t', 'ext4', '-o', 'commit=600', loop!, dir])
    mounted = true
  }
  const unmount = (): void => {
    if (mounted) {
      try { run('umount', [dir]) } catch { run('umount', ['-l', dir]) }
      mounted = false
    }
    if (loop !== null) {
      run('losetup', ['-d', loop])
      loop = null
    }
  }
  try {
    run('mkfs.ext4', ['-q', '-F', loop])
    mount()
  } catch (err) {
    unmount()
    await fs.rm(work, { recursive: true, force: true })
    throw err
  }

  let generation = 0
  return {
    dir,
    async cut () {
      const snapshot = path.join(work, `disk-${++generation}.img`)
      for (let attempt = 1; attempt <= 10; attempt++) {
        await fs.copyFile(image, snapshot)
        if (await digest(image) === await digest(snapshot)) {
          // The live filesystem is dropped (unmounting writes its dirty pages to the old
          // image, which is discarded); the snapshot becomes the disk.
          unmount()
          await fs.rm(image)
          image = snapshot
          loop = run('losetup', ['--find', '--show', image])
          mount()
          return { attempts: attempt }
        }
      }
      throw new Error('the disk image kept changing while it was copied: no consistent power-cut state after 10 attempts')
    },
    async close () {
      unmount()
      await fs.rm(work, { recursive: true, force: true })
    }
  }
}

async function storedSeqs (p: VigilProcess, token: string, patientId: string): Promise<number[]> {
  const seqs: number[] = []
  let cursor = ''
  for (;;) {
    let res = await fetch(`http://127.0.0.1:${p.httpPort}/v1/patients/${patientId}/readings?limit=1000${cursor}`, { headers: { authorization: `Bearer ${token}` } })
    // A freshly restarted process on a busy machine may shed load: wait as Retry-After asks (bounded).
    for (let attempt = 1; res.status === 503 && attempt < 10; attempt++) {
      await new Promise((resolve) => setTimeout(resolve, Number(res.headers.get('retry-after') ?? 1) * 1000))
      res = await fetch(`http://127.0.0.1:${p.httpPort}/v1/patients/${patientId}/readings?limit=1000${cursor}`, { headers: { authorization: `Bearer ${token}` } })
    }
    if (res.status !== 200) throw new Error(`readings of ${patientId}: ${res.status} ${await res.text()}`)
    const body = await res.json() as { items: Array<{ seq: number }>, nextCursor: string | null }
    seqs.push(...body.items.map((r) => r.seq))
    if (body.nextCursor === null) return seqs
    cursor = `&cursor=${body.nextCursor}`
  }
}

export async function spoolDepth (p: VigilProcess): Promise<number> {
  const text = await fetch(`http://127.0.0.1:${p.httpPort}/metrics`).then((r) => r.text())
  return Number(/^vigil_spool_depth_readings (\S+)/m.exec(text)?.[1] ?? 0)
}

/**
 * The cut discards what was not synced: a file written without fsync right before it is gone,
 * one fsync'd is kept. Checked on every run, so the test cannot pass by keeping everything.
 */
export async function cutWithControl (t: Test, disk: CuttableDisk): Promise<void> {
  const synced = path.join(disk.dir, 'control-synced')
  const unsynced = path.join(disk.dir, 'control-unsynced')
  const handle = await fs.open(synced, 'w')
  await handle.write('kept')
  await handle.sync()
  await handle.close()
  // The directory entry too (ext4 journals it with the file's inode on fsync; said for clarity).
  const dirHandle = await fs.open(disk.dir, 'r')
  await dirHandle.sync()
  await dirHandle.close()
  await fs.writeFile(unsynced, 'lost')
  const { attempts } = await disk.cut()
  t.comment(`power cut (consistent image after ${attempts} cop${attempts === 1 ? 'y' : 'ies'})`)
  t.equal(await fs.readFile(synced, 'utf8'), 'kept', 'control: an fsync\'d file survives the cut')
  const lost = await fs.readFile(unsynced, 'utf8').catch(() => '')
  t.equal(lost, '', 'control: a file written without fsync does not survive the cut')
}

/** Every reading the fleet saw acknowledged is stored, once. */
export async function verifyAcknowledged (t: Test, p: VigilProcess, token: string, fleet: Fleet, devices: Array<{ deviceId: string, patientId: string }>): Promise<void> {
  let acked = 0
  let lost = 0
  let duplicated = 0
  let stored = 0
  for (const d of devices) {
    const seqs = await storedSeqs(p, token, d.patientId)
    const distinct = new Set(seqs)
    stored += seqs.length
    duplicated += seqs.length - distinct.size
    const ackedSeqs = fleet.acked.get(d.deviceId)!
    acked += ackedSeqs.size
    for (const s of ackedSeqs) if (!distinct.has(s)) lost++
  }
  t.comment(`sent ${fleet.sent()}, acknowledged ${acked}, stored after the power cut ${stored}, lost ${lost}, duplicated ${duplicated}`)
  t.ok(acked > 100, 'readings were acknowledged before the cut')
  t.equal(lost, 0, 'no acknowledged reading lost')
  t.equal(duplicated, 0, 'none stored twice')
}

/** Waits until the fleet has `count` acknowledgements; fails after 60 s saying how many it had. */
export async function untilAcked (fleet: Fleet, count: number): Promise<void> {
  const deadline = Date.now() + 60_000
  while (fleet.ackedCount() < count) {
    if (Date.now() > deadline) throw new Error(`only ${fleet.ackedCount()} of ${count} readings acknowledged within 60 s`)
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

/**
 * Ten devices publish through `p` until a few hundred readings are acknowledged (the first
 * flush writes out everything start-up left in the page cache, so the first acks can take
 * seconds), then the cut comes mid-stream: the process dies and the power goes. Returns the
 * fleet, whose acknowledgements are what must survive.
 */
export async function publishThenCut (t: Test, p: VigilProcess, disk: CuttableDisk, devices: FleetDevice[]): Promise<Fleet> {
  const fleet = startFleet(p.mqttPort, devices, 50)
  t.teardown(() => fleet.stop())
  await untilAcked(fleet, 300)
  await new Promise((resolve) => setTimeout(resolve, 1000))
  p.child.kill('SIGKILL')
  await p.exited
  await fleet.stop()
  await cutWithControl(t, disk)
  return fleet
}
