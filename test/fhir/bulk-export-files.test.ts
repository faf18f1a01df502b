import fs from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { randomBytes } from 'node:crypto'
import { Writable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import t from 'tap'
import { EncryptedNdjsonWriter, FRAME_PLAINTEXT_BYTES, openDecrypted, type FileBinding } from '../../fhir/bulk/encrypted-ndjson.ts'

// The bulk export's files at rest (fhir/bulk/encrypted-ndjson.ts): AES-256-GCM frames that
// decrypt as a stream, and refuse to decrypt when tampered with, truncated, reordered, or
// presented as another export's or another file's.

const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vigil-bulk-files-'))
t.teardown(async () => { await fs.rm(dir, { recursive: true, force: true }) })
const key = randomBytes(32)
const at: FileBinding = { exportId: '6f1c1c52-4a8e-4a57-9d0e-6a6f7f1a2b3c', fileName: 'Observation.ndjson' }

async function readAll (file: string, k: Buffer, binding: FileBinding): Promise<string> {
  const parts: Buffer[] = []
  await pipeline(openDecrypted(file, k, binding), new Writable({ write (chunk: Buffer, _e, done) { parts.push(chunk); done() } }))
  return Buffer.concat(parts).toString('utf8')
}

const file = path.join(dir, 'Observation.ndjson')
const records = Array.from({ length: 3000 }, (_, i) => ({ resourceType: 'Observation', id: `o${i}`, note: 'x'.repeat(i % 100) }))
const writer = new EncryptedNdjsonWriter(file, key, at)
for (const r of records) await writer.line(r)
await writer.close()
const expected = records.map((r) => JSON.stringify(r) + '\n').join('')
const stored = await fs.readFile(file)

t.test('round trip over many frames; nothing readable at rest', async (t) => {
  t.ok(Buffer.byteLength(expected) > 3 * FRAME_PLAINTEXT_BYTES, 'several frames')
  t.equal(writer.records, records.length)
  t.equal(writer.bytes, Buffer.byteLength(expected))
  t.equal(await readAll(file, key, at), expected)
  t.notOk(stored.includes('resourceType'))
  t.equal((await fs.stat(file)).mode & 0o777, 0o600)
})

t.test('an empty file is one empty last frame', async (t) => {
  const empty = path.join(dir, 'Flag.ndjson')
  const w = new EncryptedNdjsonWriter(empty, key, { ...at, fileName: 'Flag.ndjson' })
  await w.close()
  t.equal(await readAll(empty, key, { ...at, fileName: 'Flag.ndjson' }), '')
})

t.test('tampered, truncated, reordered or misattributed files do not decrypt', async (t) => {
  const variant = async (name: string, bytes: Buffer): Promise<string> => {
    const p = path.join(dir, name)
    await fs.writeFile(p, bytes)
    return p
  }
  const flipped = Buffer.from(stored)
  flipped[stored.length >> 1]! ^= 1
  await t.rejects(readAll(await variant('flipped', flipped), key, at), { name: 'FrameError' }, 'a flipped bit')
  await t.rejects(readAll(await variant('short', stored.subarray(0, stored.length - 100)), key, at), { name: 'FrameError' }, 'cut inside the last frame')
  // Drop the last frame exactly: every remaining frame authenticates, but none says "last".
  const frameLength = (offset: number): number => 1 + 4 + 12 + stored.readUInt32BE(offset + 1) + 16
  const offsets: number[] = []
  for (let o = 0; o < stored.length; o += frameLength(o)) offsets.push(o)
  t.ok(offsets.length >= 4)
  await t.rejects(readAll(await variant('nolast', stored.subarray(0, offsets.at(-1))), key, at), { name: 'FrameError' }, 'last frame dropped')
  const swapped = Buffer.concat([stored.subarray(offsets[1]!, offsets[2]!), stored.subarray(0, offsets[1]!), stored.subarray(offsets[2]!)])
  await t.rejects(readAll(await variant('swapped', swapped), key, at), { name: 'FrameError' }, 'frames reordered')
  await t.rejects(readAll(file, key, { ...at, fileName: 'Patient.ndjson' }), { name: 'FrameError' }, 'another file name')
  await t.rejects(readAll(file, key, { ...at, exportId: '00000000-0000-0000-0000-000000000000' }), { name: 'FrameError' }, 'another export')
  await t.rejects(readAll(file, randomBytes(32), at), { name: 'FrameError' }, 'another key')
})
